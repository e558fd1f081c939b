"""Evaluation: the loss against an independent computation (transformers' tokenizer and GPT-2 on
windows packed here), text file vs its preprocessed prefix, refusals, and tools/evaluate.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron_zh.convert.hf.names import to_hf_config, to_hf_state_dict
from megatron_zh.data.indexed.builder import IndexedDatasetBuilder
from megatron_zh.data.indexed.dataset import IndexedDataset, read_metadata, write_metadata
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.pipeline import preprocess
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.inference import GenerationConfig, SamplingConfig, encode_prompt, generate
from megatron_zh.inference.evaluation import EvaluationConfig, evaluate_dataset, evaluate_input
from megatron_zh.model import GPT2Config, GPT2Model
from megatron_zh.text.tokenizer import BertChineseTokenizer

DOCUMENTS = 12  # real CLUECorpusSmall documents, about 9,000 tokens


@pytest.fixture(scope="module")
def tokenizer(zh_vocab_file) -> BertChineseTokenizer:
    return BertChineseTokenizer(zh_vocab_file)


@pytest.fixture(scope="module")
def model() -> GPT2Model:
    torch.manual_seed(0)
    return GPT2Model(GPT2Config.from_preset("gpt2-tiny")).eval()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, zh_corpus_file, zh_vocab_file) -> dict:
    """A text file of real documents (and a blank line, which preprocessing drops) and its dataset."""
    with open(zh_corpus_file, encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(DOCUMENTS)]
    lines.insert(3, "   ")
    out = tmp_path_factory.mktemp("eval_corpus")
    text = out / "docs.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stats = preprocess(
        PreprocessConfig(
            inputs=[str(text)], output_prefix=str(out / "docs"), vocab_file=str(zh_vocab_file), progress=False
        )
    )
    return {"text": text, "lines": lines, "prefix": stats.outputs["text"]}


def reference_loss(
    model: GPT2Model, vocab_file, lines: list[str], seq: int, eod_mask_loss: bool = False
) -> tuple[float, int]:
    """transformers' BertTokenizer and GPT2LMHeadModel (our weights), windows cut here by hand."""
    from transformers import BertTokenizer, GPT2LMHeadModel

    bert = BertTokenizer(str(vocab_file), do_lower_case=True)
    stream: list[int] = []
    for line in lines:
        ids = bert(line, add_special_tokens=False)["input_ids"]
        if ids:
            stream += [bert.cls_token_id] + ids + [bert.sep_token_id]
    hf = GPT2LMHeadModel(to_hf_config(model.config)).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.config))
    n = len(stream)
    windows = [(k * seq, seq) for k in range((n - 1) // seq)]  # (first token, predictions scored at the end)
    if (n - 1) % seq:
        windows.append((max(0, n - 1 - seq), (n - 1) % seq))
    total, count = 0.0, 0
    with torch.no_grad():
        for first, scored in windows:
            window = torch.tensor(stream[first : first + seq + 1][-(seq + 1) :])
            inputs, labels = window[:-1], window[1:]
            losses = F.cross_entropy(hf(inputs[None]).logits[0], labels, reduction="none")[-scored:]
            keep = inputs[-scored:] != bert.sep_token_id if eod_mask_loss else torch.ones(scored, dtype=torch.bool)
            total += losses[keep].double().sum().item()
            count += int(keep.sum())
    return total / count, count


def test_loss_equals_an_independent_computation_through_text_and_prefix(model, tokenizer, corpus, zh_vocab_file):
    seq = 100
    dataset = IndexedDataset(corpus["prefix"])
    n = dataset.num_tokens
    assert (n - 1) % seq and n > 20 * seq  # a tail and many full windows
    expected, count = reference_loss(model, zh_vocab_file, corpus["lines"], seq)
    assert count == n - 1

    config = EvaluationConfig(seq_length=seq, batch_size=7, progress=False)
    from_text = evaluate_input(model, tokenizer, str(corpus["text"]), config)
    from_prefix = evaluate_input(model, tokenizer, corpus["prefix"], config)
    assert from_text.input_format == "text" and from_prefix.input_format == "indexed"
    assert from_text.loss == from_prefix.loss  # the same tokens in the same batches
    assert abs(from_prefix.loss - expected) <= 1e-4
    assert from_prefix.tokens == n - 1 and from_prefix.stream_tokens == n
    assert from_prefix.windows == (n - 1) // seq + 1 and from_prefix.documents == DOCUMENTS
    assert from_prefix.perplexity == pytest.approx(math.exp(from_prefix.loss))
    # Batching changes nothing but rounding.
    single = evaluate_input(model, tokenizer, corpus["prefix"], EvaluationConfig(seq, batch_size=1, progress=False))
    assert abs(single.loss - from_prefix.loss) <= 1e-6


def test_full_windows_are_training_samples_in_file_order(corpus):
    """Training's sample index (the C++ helper GPTDataset uses) over the documents in file order
    starts sample k at token k * seq of the stream: the windows evaluation cuts."""
    from megatron_zh.data.datasets import helpers

    dataset = IndexedDataset(corpus["prefix"])
    lengths = dataset.sequence_lengths
    for seq in (64, 100, 128):
        sample_index = helpers.build_sample_idx(
            lengths, np.arange(len(lengths), dtype=np.int32), seq, 1, int(lengths.sum()), True, True
        )
        document_starts = np.cumsum(lengths, dtype=np.int64) - lengths
        starts = document_starts[sample_index[:-1, 0]] + sample_index[:-1, 1]
        assert len(starts) == (dataset.num_tokens - 1) // seq
        assert (starts == np.arange(len(starts)) * seq).all()


def test_eod_mask_loss_and_a_stream_shorter_than_one_window(model, tokenizer, corpus, zh_vocab_file):
    seq = 128
    expected, count = reference_loss(model, zh_vocab_file, corpus["lines"], seq, eod_mask_loss=True)
    got = evaluate_input(model, tokenizer, corpus["prefix"], EvaluationConfig(seq, eod_mask_loss=True, progress=False))
    assert got.tokens == count == IndexedDataset(corpus["prefix"]).num_tokens - 1 - (DOCUMENTS - 1)
    assert abs(got.loss - expected) <= 1e-4

    short = ["今天天气很好。", "北京是中国的首都。"]
    path = corpus["text"].parent / "short.txt"
    path.write_text("\n".join(short), encoding="utf-8")
    expected, count = reference_loss(model, zh_vocab_file, short, seq)
    got = evaluate_input(model, tokenizer, str(path), EvaluationConfig(seq, progress=False))
    assert got.windows == 1 and got.tokens == count < seq
    assert abs(got.loss - expected) <= 1e-4


def test_max_tokens_evaluates_a_prefix_of_the_stream(model, tokenizer, corpus):
    dataset = IndexedDataset(corpus["prefix"])
    got = evaluate_dataset(model, dataset, EvaluationConfig(64, max_tokens=500, progress=False), eod_id=tokenizer.eod)
    assert got.stream_tokens == 500 and got.tokens == 499 and got.windows == 8
    starts = np.cumsum(dataset.sequence_lengths) - dataset.sequence_lengths
    assert got.documents == int((starts < 500).sum()) >= 1


def test_jsonl_input_reads_the_named_key(model, tokenizer, corpus, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(json.dumps({"content": line}, ensure_ascii=False) + "\n" for line in corpus["lines"]), encoding="utf-8"
    )
    config = EvaluationConfig(96, max_tokens=2000, progress=False)
    from_json = evaluate_input(
        model, tokenizer, str(path), EvaluationConfig(96, max_tokens=2000, json_key="content", progress=False)
    )
    assert from_json.loss == evaluate_input(model, tokenizer, corpus["prefix"], config).loss
    with pytest.raises(DataFormatError, match="missing key 'text'"):
        evaluate_input(model, tokenizer, str(path), EvaluationConfig(96, strict=True, progress=False))


# -- refusals ------------------------------------------------------------------------------------


def test_prefix_made_with_another_vocab_is_refused(model, tokenizer, corpus, tmp_path):
    prefix = str(tmp_path / "other")
    with IndexedDatasetBuilder(prefix) as builder:
        builder.add_document(IndexedDataset(corpus["prefix"])[0])
        builder.finalize()
    write_metadata(prefix, {**read_metadata(corpus["prefix"]), "vocab_fingerprint": "sha256:" + "0" * 64})
    with pytest.raises(DataFormatError, match="made with vocab sha256:0000"):
        evaluate_input(model, tokenizer, prefix + ".bin", EvaluationConfig(64, progress=False))


def test_token_ids_outside_the_vocab_are_refused(model, tokenizer, tmp_path):
    prefix = str(tmp_path / "big_ids")
    with IndexedDatasetBuilder(prefix) as builder:
        builder.add_document([101, 800, 30000, 102])
        builder.finalize()
    with pytest.raises(DataFormatError, match="token 2 of the stream has id 30000"):
        evaluate_input(model, tokenizer, prefix, EvaluationConfig(64, progress=False))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such text file, and no dataset"),
        ("\n  \n", "no documents"),
        (b"\xff\xfe bad\n", "UTF-16LE .*iconv -f UTF-16 -t UTF-8"),  # a UTF-16 byte-order mark
        (b"fine\nbad \xc3\x28 byte\n", "invalid UTF-8"),
        # A GBK corpus, even half ASCII: refused with the way out, not evaluated on its ASCII half.
        (
            "中文语料的一行，用 GBK 编码保存。\nplain ASCII line\n".encode("gbk") * 5,
            "GB18030 .*iconv -f GB18030 -t UTF-8",
        ),
    ],
)
def test_bad_inputs_get_clear_errors(model, tokenizer, tmp_path, content, message):
    path = tmp_path / "input.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=message):
        evaluate_input(model, tokenizer, str(path), EvaluationConfig(64, strict=True, progress=False))


def test_config_is_validated(model, tokenizer, corpus):
    with pytest.raises(ConfigError, match="exceeds the model's 256 positions"):
        evaluate_input(model, tokenizer, corpus["prefix"], EvaluationConfig(512, progress=False))
    for bad in (dict(seq_length=0), dict(seq_length=8, batch_size=0), dict(seq_length=8, max_tokens=1)):
        with pytest.raises(ConfigError):
            EvaluationConfig(**bad)


# -- tools/evaluate.py ---------------------------------------------------------------------------


def run_tool(repo_root, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(repo_root / "tools" / "evaluate.py"), *map(str, args)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_evaluate_tool_on_a_trained_checkpoint_and_its_hf_export_agree(tiny_checkpoint, repo_root, corpus, tmp_path):
    """Our checkpoint and its Hugging Face export give the same loss on the same windows; the
    trained model beats the uniform guess (ln 21128 = 9.96) after its 8 steps."""
    from megatron_zh.convert.loading import load_model

    common = ["--input", corpus["prefix"], "--seq-length", 128, "--max-tokens", 4000, "--device", "cpu"]
    ours = run_tool(repo_root, "--checkpoint", tiny_checkpoint["save"], *common)
    assert ours.returncode == 0, ours.stderr
    lines = ours.stdout.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert {"loss", "perplexity", "tokens", "documents", "seq_length", "source"} <= set(result)
    assert result["tokens"] == 3999 and result["loss"] < math.log(21128) - 0.5  # 8 steps of training
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))

    hf_dir = export_with_the_tool(tiny_checkpoint, repo_root, tmp_path / "hf")
    theirs = run_tool(repo_root, "--hf", hf_dir, *common)
    assert theirs.returncode == 0, theirs.stderr
    assert abs(json.loads(theirs.stdout)["loss"] - result["loss"]) <= 1e-4

    # Generation too (here, to share the export): our greedy decoding of the checkpoint equals
    # transformers' own generate() on the export, [SEP] ending the document in both.
    from transformers import GPT2LMHeadModel

    loaded = load_model(str(tiny_checkpoint["save"]))
    assert load_model(hf_dir, "hf").tokenizer.fingerprint == loaded.tokenizer.fingerprint
    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    config = GenerationConfig(20, SamplingConfig(greedy=True))
    for prompt in ("今天天气很好，", "北京"):
        (ours_text,) = generate(loaded.model, loaded.tokenizer, [prompt], config)
        prompt_ids = torch.tensor([encode_prompt(loaded.tokenizer, prompt)])
        with torch.no_grad():
            out = hf.generate(
                prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=20,
                do_sample=False,
                eos_token_id=loaded.tokenizer.eod,
                pad_token_id=loaded.tokenizer.pad,
            )
        assert ours_text.token_ids == out[0, prompt_ids.shape[1] :].tolist()


def export_with_the_tool(tiny_checkpoint, repo_root, out) -> str:
    """tools/convert_to_hf.py's export of the checkpoint."""
    result = subprocess.run(
        [
            sys.executable,
            str(repo_root / "tools" / "convert_to_hf.py"),
            "--checkpoint",
            str(tiny_checkpoint["save"]),
            "--output",
            str(out),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return str(out)


@pytest.mark.integration
def test_evaluate_tool_errors_are_one_line(tiny_checkpoint, repo_root, corpus, tmp_path):
    missing = run_tool(
        repo_root, "--checkpoint", tiny_checkpoint["save"], "--input", tmp_path / "nope.txt", "--seq-length", 64
    )
    assert missing.returncode == 2 and "no such text file" in missing.stderr and "Traceback" not in missing.stderr
    too_long = run_tool(
        repo_root, "--checkpoint", tiny_checkpoint["save"], "--input", corpus["prefix"], "--seq-length", 100000
    )
    assert too_long.returncode == 2 and "exceeds the model's" in too_long.stderr
