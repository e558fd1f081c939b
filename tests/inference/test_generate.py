"""Text generation: the cached decoder against the model's own forward, greedy and sampled
decoding, logit filtering against transformers' warpers, streaming, and tools/generate.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from megatron_zh.errors import ConfigError
from megatron_zh.inference import (
    GenerationConfig,
    SamplingConfig,
    encode_prompt,
    filter_logits,
    generate,
    generate_token_ids,
    stream_text,
)
from megatron_zh.inference.decoder import CachedDecoder
from megatron_zh.inference.streaming import TextStream
from megatron_zh.model import GPT2Config, GPT2Model
from megatron_zh.text.tokenizer import BertChineseTokenizer

CJK_PAIR_WITH_SPACE = re.compile(r"[\u4e00-\u9fff] [\u4e00-\u9fff]")


def tiny_model(seed: int = 0, **overrides) -> GPT2Model:
    """gpt2-tiny with weights drawn wide (std 0.3): at GPT-2's 0.02 an untrained model with a tied
    head just repeats its last token, which would make greedy decoding a weak test."""
    torch.manual_seed(seed)
    return GPT2Model(GPT2Config.from_preset("gpt2-tiny", **{"init_std": 0.3, **overrides})).eval()


@pytest.fixture(scope="module")
def tokenizer(zh_vocab_file) -> BertChineseTokenizer:
    return BertChineseTokenizer(zh_vocab_file)


@pytest.fixture(scope="module")
def model() -> GPT2Model:
    return tiny_model()


@pytest.fixture(scope="module")
def short_model() -> GPT2Model:
    """16 positions: generation slides its window after a few tokens."""
    return tiny_model(max_position_embeddings=16)


def reference_greedy(model: GPT2Model, prompt: list[int], steps: int) -> list[int]:
    """Argmax of a full forward over the last max_positions tokens, one token at a time."""
    sequence = list(prompt)
    window = model.config.max_position_embeddings
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([sequence[-window:]])).logits[0, -1]
            sequence.append(int(logits.argmax()))
    return sequence[len(prompt) :]


def run(model, prompts, config, eod_id=102, row_ids=None) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in prompts]
    for index, token in generate_token_ids(model, prompts, config, eod_id=eod_id, pad_id=0, row_ids=row_ids):
        out[index].append(token)
    return out


# -- the cached decoder --------------------------------------------------------------------------


def test_cached_decoder_matches_full_forward(short_model):
    """Rows of different lengths (left-padded together), prefill then steps, a row dropped on
    the way: every row's logits equal GPT2Model.forward on that row alone."""
    rows = [[101, 2769, 4263], [101] + list(range(3000, 3012)), [101, 800]]

    def check(logits):
        with torch.no_grad():
            for row, tokens in enumerate(rows):
                expected = short_model(torch.tensor([tokens])).logits[0, -1]
                torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)

    decoder = CachedDecoder(short_model, pad_id=0)
    check(decoder.prefill(rows, extra_columns=3))
    for tokens, token in zip(rows, (5000, 6000, 7000)):
        tokens.append(token)
    check(decoder.step(torch.tensor([5000, 6000, 7000])))
    decoder.keep_rows([0, 2])
    rows = [rows[0], rows[2]]
    for tokens, token in zip(rows, (5001, 7001)):
        tokens.append(token)
    check(decoder.step(torch.tensor([5001, 7001])))
    assert decoder.free_columns == 1


def test_decoder_refuses_to_overrun_positions(short_model):
    decoder = CachedDecoder(short_model, pad_id=0)
    decoder.prefill([list(range(100, 116))], extra_columns=1)  # 16 tokens: every position used
    with pytest.raises(RuntimeError, match="position 16"):
        decoder.step(torch.tensor([5]))
    with pytest.raises(ValueError, match="1..16 tokens"):
        decoder.prefill([list(range(100, 117))], extra_columns=0)


# -- decoding ------------------------------------------------------------------------------------


def test_greedy_equals_argmax_of_full_forward_step_by_step(short_model):
    """Prompts shorter and longer than the 16 positions, run past them: the window slides."""
    prompts = [[101, 2769], [101] + list(range(4000, 4009)), [101] + list(range(5000, 5025))]
    config = GenerationConfig(max_new_tokens=12, sampling=SamplingConfig(greedy=True), stop_at_eod=False)
    got = run(short_model, prompts, config)
    assert got == [reference_greedy(short_model, p, 12) for p in prompts]


def test_stop_at_eod_ends_only_that_prompt(short_model):
    prompts = [[101, 2769], [101, 3000, 3001, 3002]]
    expected = [reference_greedy(short_model, p, 10) for p in prompts]
    # Call "end of document" a token prompt 0 produces after a few steps and prompt 1 never does.
    stop = next(i for i in range(2, 10) if expected[0][i] not in expected[0][:i] + expected[1])
    eod = expected[0][stop]
    config = GenerationConfig(max_new_tokens=10, sampling=SamplingConfig(greedy=True))
    got = run(short_model, prompts, config, eod_id=eod)
    assert got == [expected[0][: stop + 1], expected[1]]
    assert (
        run(short_model, prompts, GenerationConfig(10, SamplingConfig(greedy=True), stop_at_eod=False), eod_id=eod)
        == expected
    )


def test_sampling_is_deterministic_per_seed_and_independent_of_batch(model):
    prompts = [[101, 2769, 4263], [101], [101] + list(range(3000, 3020))]

    def sample(seed, **kw):
        return run(model, prompts, GenerationConfig(20, SamplingConfig(seed=seed, **kw), stop_at_eod=False))

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    assert sample(7, top_k=0) != first  # the filter matters to the draw
    # Prompt i draws from stream i: alone, with its row id, it gets the same tokens as in the batch.
    alone = run(model, [prompts[2]], GenerationConfig(20, SamplingConfig(seed=7), stop_at_eod=False), row_ids=[2])
    assert alone == [first[2]]


def test_top_k_1_is_greedy(short_model):
    prompts = [[101, 2769, 4263]]
    sampled = run(short_model, prompts, GenerationConfig(8, SamplingConfig(top_k=1, seed=3), stop_at_eod=False))
    assert sampled == [reference_greedy(short_model, prompts[0], 8)]


# -- logit filtering -----------------------------------------------------------------------------


def test_filter_logits_support_matches_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(6, 500) * 3
    for k in (1, 5, 50):
        ours = filter_logits(logits, top_k=k)
        theirs = TopKLogitsWarper(top_k=k)(None, logits.clone())
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
        assert (torch.isfinite(ours).sum(-1) == k).all()
        torch.testing.assert_close(ours[torch.isfinite(ours)], logits[torch.isfinite(ours)])
    for p in (0.05, 0.5, 0.9, 0.99):
        ours = filter_logits(logits, top_p=p)
        theirs = TopPLogitsWarper(top_p=p)(None, logits.clone())
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
        # The support is the smallest most-likely set whose probability reaches p.
        probs = logits.softmax(-1)
        kept = torch.where(torch.isfinite(ours), probs, 0).sum(-1)
        smallest_kept = torch.where(torch.isfinite(ours), probs, 2).min(-1).values
        assert (kept >= p - 1e-6).all() and (kept - smallest_kept < p).all()
    assert torch.equal(filter_logits(logits), logits)  # both off


def test_filter_logits_top_k_then_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=3)).tolist() == [[True, True, True, False, False]]
    # After top-k 3 the renormalised probabilities are ~0.665, 0.245, 0.090: p 0.7 needs two.
    assert torch.isfinite(filter_logits(logits, top_k=3, top_p=0.7)).tolist() == [[True, True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1e-9)).tolist() == [[True, False, False, False, False]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(seed=-1), "seed"),
    ],
)
def test_sampling_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**kwargs)


def test_generation_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)


# -- text ----------------------------------------------------------------------------------------


def test_prompt_is_framed_as_a_document_start(tokenizer):
    assert encode_prompt(tokenizer, "今天天气") == [tokenizer.cls] + tokenizer.encode("今天天气")
    assert encode_prompt(tokenizer, "") == [tokenizer.cls]


def test_text_stream_pieces_concatenate_to_decode(tokenizer):
    """WordPiece continuations join the word before them, across the prompt boundary too."""
    prompt = encode_prompt(tokenizer, "我们play")
    ing, s = (tokenizer.backend.token_to_id(t) for t in ("##ing", "##s"))
    new = [ing] + tokenizer.encode("今天很好, hello world!我爱北京") + [tokenizer.unk, s]
    stream = TextStream(tokenizer, prompt)
    pieces = [stream.push(t) for t in new]
    expected = tokenizer.decode(prompt + new, skip_special_tokens=True)
    prefix = tokenizer.decode(prompt, skip_special_tokens=True)
    assert expected.startswith(prefix)
    assert "".join(pieces) == expected[len(prefix) :]
    assert "".join(pieces).startswith("ing今天很好")
    # End of document: a line break, then the next document from scratch.
    assert stream.push(tokenizer.eod) == "\n"
    assert stream.push(tokenizer.cls) == ""
    assert "".join(stream.push(t) for t in tokenizer.encode("北京 hello")) == "北京hello"


def test_streaming_equals_generate_and_has_no_spaces_between_chinese_characters(model, tokenizer):
    config = GenerationConfig(48, SamplingConfig(seed=11, top_k=0), stop_at_eod=False)
    prompts = ["今天天气很好", "北京是"]
    seen: dict[int, list[str]] = {0: [], 1: []}
    results = generate(model, tokenizer, prompts, config, on_text=lambda i, piece: seen[i].append(piece))
    for index, result in enumerate(results):
        assert len(result.token_ids) == 48 and not result.ended_document
        assert "".join(seen[index]) == result.text
        whole = tokenizer.decode(result.prompt_ids + result.token_ids, skip_special_tokens=True)
        prompt_text = tokenizer.decode(result.prompt_ids, skip_special_tokens=True)
        assert tokenizer.eod not in result.token_ids  # else the text holds a line break decode() drops
        assert result.text == whole[len(prompt_text) :]
        assert not CJK_PAIR_WITH_SPACE.search(result.text)
    assert sum(map(len, seen.values())) > 0
    assert sum(re.match(r"[\u4e00-\u9fff]", ch) is not None for ch in results[0].text) > 5  # the check saw CJK pairs
    streamed = list(stream_text(model, tokenizer, prompts[1], config, row_id=1))
    assert "".join(streamed) == results[1].text and len(streamed) > 1


def test_padded_vocab_rows_are_never_generated_and_a_larger_vocab_is_refused(tokenizer):
    """A model whose embedding is padded past the vocab (Megatron's divisible-by padding) never
    emits the padding ids; a model smaller than the vocab is refused."""
    padded = tiny_model(vocab_size=tokenizer.vocab_size + 24)
    with torch.no_grad():
        padded.embedding.word_embeddings.weight[tokenizer.vocab_size :] *= 50  # the padding would win every argmax
    config = GenerationConfig(12, SamplingConfig(greedy=True), stop_at_eod=False)
    (result,) = generate(padded, tokenizer, ["你好"], config)
    assert len(result.token_ids) == 12 and max(result.token_ids) < tokenizer.vocab_size
    with pytest.raises(ConfigError, match="only 1000 token embeddings"):
        generate(tiny_model(vocab_size=1000), tokenizer, ["你好"], GenerationConfig(4))


# -- tools/generate.py ---------------------------------------------------------------------------


def run_tool(repo_root, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(repo_root / "tools" / "generate.py"), *map(str, args)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_generate_tool_on_a_trained_checkpoint(tiny_checkpoint, repo_root, tmp_path):
    """Streamed and batched runs print the same texts; --json the same again; no CJK spaces."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("今天天气很好\n\n北京是中国的\n", encoding="utf-8")
    common = [
        "--checkpoint",
        tiny_checkpoint["save"],
        "--prompt-file",
        prompts,
        "--max-new-tokens",
        24,
        "--seed",
        5,
        "--device",
        "cpu",
    ]
    streamed = run_tool(repo_root, *common)
    assert streamed.returncode == 0, streamed.stderr
    batched = run_tool(repo_root, *common, "--no-stream", "--json")
    assert batched.returncode == 0, batched.stderr
    records = [json.loads(line) for line in batched.stdout.splitlines()]
    assert [r["prompt"] for r in records] == ["今天天气很好", "北京是中国的"]
    assert streamed.stdout.splitlines() == [r["prompt"] + r["text"] for r in records]
    for record in records:
        assert 1 <= record["tokens"] <= 24 and not CJK_PAIR_WITH_SPACE.search(record["text"])
    assert "tokens/s" in streamed.stderr


@pytest.mark.integration
def test_generate_tool_refuses_bad_flags(tiny_checkpoint, repo_root, tmp_path):
    bad = run_tool(repo_root, "--checkpoint", tiny_checkpoint["save"], "--prompt", "你好", "--greedy", "--top-k", 5)
    assert bad.returncode == 2 and "--top-k (sampling options) would be ignored" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = run_tool(repo_root, "--checkpoint", tiny_checkpoint["save"], "--prompt-file", tmp_path / "nope.txt")
    assert missing.returncode == 2 and "nope.txt: no such file" in missing.stderr
    not_a_checkpoint = run_tool(repo_root, "--checkpoint", tmp_path, "--prompt", "你好")
    assert not_a_checkpoint.returncode == 2 and str(tmp_path) in not_a_checkpoint.stderr
    assert "Traceback" not in not_a_checkpoint.stderr


NOT_UTF8 = b"\xff\xe4\xbb\x8a\xe5\xa4\xa9"  # a stray byte, then UTF-8 "今天"
DECODE_ERROR = "('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"


def test_a_prompt_that_is_not_utf8_is_one_line_before_any_model_is_read(tmp_path, capsys):
    from tool_runs import run_tool as run_in_process

    missing = str(tmp_path / "no_model")  # never read: the prompts are checked first
    # How Python hands a program command-line bytes that are not UTF-8: as lone surrogates.
    assert run_in_process("generate", ["--hf", missing, "--prompt", "你好", os.fsdecode(NOT_UTF8)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: prompt 2 of --prompt: not UTF-8 text {DECODE_ERROR}; run it in a UTF-8 locale (e.g. LANG=C.UTF-8) "
        "or put the prompts in a UTF-8 --prompt-file"
    )
    assert run_in_process("generate", ["--hf", missing, "--prompt", "\ud800"]) == 2  # no bytes behind it
    assert "prompt 1 of --prompt: not UTF-8 text ('utf-8' codec can't encode character '\\ud800'" in (
        capsys.readouterr().err
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(NOT_UTF8 + b"\n")
    assert run_in_process("generate", ["--hf", missing, "--prompt-file", str(prompts)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --prompt-file {prompts}: not UTF-8 text {DECODE_ERROR}; convert the file to UTF-8 (e.g. with iconv)"
    )


@pytest.mark.integration
def test_a_shell_without_a_utf8_locale_gets_one_line(repo_root, tmp_path):
    """The bytes as a shell with a C or Latin-1 locale passes them, through a real process."""
    result = subprocess.run(
        [sys.executable, str(repo_root / "tools" / "generate.py"), "--hf", str(tmp_path), "--prompt", NOT_UTF8],
        cwd=repo_root,
        capture_output=True,
        env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        timeout=120,
    )
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"error: prompt 1 of --prompt: not UTF-8 text {DECODE_ERROR}")
