"""tools/preprocess_data.py and megatron_zh.data.preprocess: real corpus end to end, JSON lines, several
inputs, every kind of bad line (skipped and counted, or --strict), determinism across worker counts,
and interrupted runs leaving no .idx that looks whole."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from repo_paths import REPO_ROOT as REPO

from megatron_zh.data.indexed.builder import IndexedDatasetBuilder
from megatron_zh.data.indexed.dataset import IndexedDataset, read_metadata
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.pipeline import preprocess
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.text.tokenizer import BertChineseTokenizer

TOOL = REPO / "tools" / "preprocess_data.py"


@pytest.fixture(scope="module")
def bert(zh_vocab_file):
    from transformers import BertTokenizer

    return BertTokenizer(str(zh_vocab_file))


def run_tool(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=REPO, **kwargs
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def config(tmp_path, vocab, inputs, **overrides) -> PreprocessConfig:
    values = dict(
        inputs=[str(p) for p in inputs],
        output_prefix=str(tmp_path / "out"),
        vocab_file=str(vocab),
        workers=1,
        progress=False,
    )
    values.update(overrides)
    return PreprocessConfig(**values)


def documents_of(prefix) -> list[list[int]]:
    dataset = IndexedDataset(str(prefix))
    return [dataset[i].tolist() for i in range(len(dataset))]


def framed(bert, texts) -> list[list[int]]:
    return [ids for ids in bert(list(texts))["input_ids"] if len(ids) > 2]


def outputs_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "out" in p.name)


@pytest.mark.integration
def test_real_corpus_end_to_end(tmp_path, zh_vocab_file, zh_corpus_file, bert):
    result = run_tool(
        "--input",
        zh_corpus_file,
        "--output-prefix",
        tmp_path / "clue",
        "--vocab-file",
        zh_vocab_file,
        "--workers",
        2,
        "--log-interval",
        1000,
    )
    prefix = tmp_path / "clue_text_document"
    lines = [line for line in zh_corpus_file.read_text(encoding="utf-8").split("\n") if line]
    expected = bert(lines)["input_ids"]  # [CLS] ... [SEP], exactly as transformers frames a sentence
    assert documents_of(prefix) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset
    theirs = MegatronIndexedDataset(str(prefix))
    assert len(theirs) == 2500 and all(theirs[i].tolist() == expected[i] for i in range(0, 2500, 7))

    meta = read_metadata(prefix)
    assert meta["vocab_fingerprint"] == BertChineseTokenizer(zh_vocab_file).fingerprint
    assert (meta["documents"], meta["tokens"], meta["dropped_empty"], meta["bad_lines"]) == (
        2500,
        sum(map(len, expected)),
        0,
        0,
    )
    assert (meta["eod"], meta["cls"], meta["append_eod"], meta["prepend_cls"], meta["dtype"]) == (
        102,
        101,
        True,
        True,
        "uint16",
    )
    # progress lines (stderr is not a terminal here) and the final summary
    progress = re.search(
        r"[\d,]+ documents \(\d+/s\), [\d,]+ tokens \([\d.]+ M/s\), [\d.]+/[\d.]+ MB "
        r"\([\d.]+ MB/s\), ETA \S+",
        result.stderr,
    )
    assert progress, result.stderr
    unk = "[UNK] 0.65% (4,270: “ 1,738, ” 1,692, — 309, … 282, – 49)"  # the figure for this sample
    assert f"done: 2,500 documents, {meta['tokens']:,} tokens, {unk}, 0 empty dropped, 0 bad lines" in result.stderr
    assert "would become known tokens with: --normalize punctuation 96.2%" in result.stderr
    assert meta["normalization"] == "none" and meta["unk"]["unk"] == 4270


@pytest.mark.integration
def test_framing_flags(tmp_path, zh_vocab_file, bert):
    corpus = tmp_path / "c.txt"
    corpus.write_text("你好世界\nhello\n", encoding="utf-8")
    bare = bert(["你好世界", "hello"], add_special_tokens=False)["input_ids"]
    cases = {
        (): [[101, *d, 102] for d in bare],
        ("--no-prepend-cls",): [[*d, 102] for d in bare],
        ("--no-append-eod",): [[101, *d] for d in bare],
        ("--no-prepend-cls", "--no-append-eod"): bare,
        ("--append-eod", "--tokenizer-type", "BertWordPieceLowerCase", "--dataset-impl", "mmap"): [
            [101, *d, 102] for d in bare
        ],
    }
    for i, (flags, expected) in enumerate(cases.items()):
        run_tool(
            "--input",
            corpus,
            "--output-prefix",
            tmp_path / f"f{i}",
            "--vocab-file",
            zh_vocab_file,
            "--workers",
            1,
            *flags,
        )
        assert documents_of(tmp_path / f"f{i}_text_document") == expected, flags
        meta = read_metadata(tmp_path / f"f{i}_text_document")
        assert meta["append_eod"] == ("--no-append-eod" not in flags)


def test_json_lines_with_several_keys(tmp_path, zh_vocab_file, bert):
    records = [
        {"text": "第一篇文章。", "title": "标题一", "id": 1},
        {"text": "Second doc.", "title": "Title 2"},
        {"text": "  ", "title": "只有标题"},
    ]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    stats = preprocess(config(tmp_path, zh_vocab_file, [corpus], json_keys=("text", "title"), workers=2))
    assert documents_of(tmp_path / "out_text_document") == framed(bert, [r["text"] for r in records])
    assert documents_of(tmp_path / "out_title_document") == framed(bert, [r["title"] for r in records])
    assert stats.documents == {"text": 2, "title": 3} and stats.dropped_empty == {"text": 1, "title": 0}
    assert read_metadata(tmp_path / "out_title_document")["json_key"] == "title"


@pytest.mark.integration
def test_several_inputs_and_globs(tmp_path, zh_vocab_file, bert):
    shards = tmp_path / "shards"
    shards.mkdir()
    texts = {"a.txt": ["甲一", "甲二"], "b.txt": ["乙一"], "c.jsonl": ["丙一", "丙二"]}
    for name, lines in texts.items():
        body = [json.dumps({"text": t}, ensure_ascii=False) for t in lines] if name.endswith("jsonl") else lines
        (shards / name).write_text("\n".join(body) + "\n", encoding="utf-8")
    extra = tmp_path / "z.txt"
    extra.write_text("最后\n", encoding="utf-8")
    run_tool(
        "--input",
        shards / "*",
        extra,
        "--output-prefix",
        tmp_path / "out",
        "--vocab-file",
        zh_vocab_file,
        "--workers",
        2,
    )
    expected = framed(bert, texts["a.txt"] + texts["b.txt"] + texts["c.jsonl"] + ["最后"])  # globs expand sorted
    assert documents_of(tmp_path / "out_text_document") == expected
    assert len(read_metadata(tmp_path / "out_text_document")["inputs"]) == 4


BAD_LINES = [
    (b'{"text": "good one"}', None),
    (b'{"text": "unterminated', "invalid JSON"),
    (b'{"body": "no text key"}', "missing key 'text'"),
    (b'{"text": 42}', "key 'text' holds a number, not a string"),
    (b'{"text": null}', "key 'text' holds a null, not a string"),
    (b'{"text": ["a", "b"]}', "key 'text' holds a array, not a string"),
    (b'["not", "an", "object"]', "a JSON list, not an object"),
    (b'{"text": "bad \xff\xfe utf-8"}', "invalid UTF-8 at byte 14"),
    (b'{"text": "escaped \\ud800 surrogate"}', "key 'text' holds a lone surrogate '\\ud800'"),
    # Which text is the document? Neither: json alone would keep "second" silently.
    (b'{"text": "first", "text": "second"}', 'key "text" is written twice (columns 2 and 19)'),
    (b"", None),  # blank: an empty document, dropped
    (b'{"text": "\xe4\xb8\xad\xe6\x96\x87 fine"}', None),
]


def test_bad_json_lines_are_reported_and_skipped(tmp_path, zh_vocab_file, bert, caplog):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    with caplog.at_level("WARNING", logger="megatron_zh"):
        stats = preprocess(config(tmp_path, zh_vocab_file, [corpus], workers=2))
    assert stats.bad_lines == 9 and stats.documents["text"] == 2 and stats.dropped_empty["text"] == 1
    assert documents_of(tmp_path / "out_text_document") == framed(bert, ["good one", "中文 fine"])
    for line_no, (_, reason) in enumerate(BAD_LINES, start=1):
        if reason:
            assert any(f"{corpus}:{line_no}: {reason}" in r.getMessage() for r in caplog.records), reason
    assert read_metadata(tmp_path / "out_text_document")["bad_lines"] == 9


def test_bad_text_lines_and_empty_documents(tmp_path, zh_vocab_file, bert, caplog):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(
        b"first\n\n   \t\n\x00\x01\nbroken \xc3\x28 utf-8\n\xe7\xac\xac\xe4\xba\x8c\r\nlast line without newline"
    )
    with caplog.at_level("WARNING", logger="megatron_zh"):
        stats = preprocess(config(tmp_path, zh_vocab_file, [corpus]))
    assert documents_of(tmp_path / "out_text_document") == framed(bert, ["first", "第二", "last line without newline"])
    assert stats.bad_lines == 1 and stats.dropped_empty["text"] == 3  # blank, whitespace, control characters only
    assert any(f"{corpus}:5: invalid UTF-8 at byte 7" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
@pytest.mark.parametrize(
    "bad_line, reason",
    [
        (b'{"text": 7}', "holds a number"),
        (b"{oops", "invalid JSON"),
        (b'{"x": "y"}', "missing key 'text'"),
        (b'{"text": "\xff"}', "invalid UTF-8"),
    ],
)
def test_strict_stops_without_output(tmp_path, zh_vocab_file, bad_line, reason):
    corpus = tmp_path / "c.jsonl"
    good = b'{"text": "ok"}\n' * 3000
    corpus.write_bytes(good + bad_line + b"\n" + good)
    result = run_tool(
        "--input",
        corpus,
        "--output-prefix",
        tmp_path / "out",
        "--vocab-file",
        zh_vocab_file,
        "--workers",
        2,
        "--chunk-mb",
        0.01,
        "--strict",
        check=False,
    )
    assert result.returncode == 2
    assert f"error: {corpus}:3001: " in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr
    assert outputs_in(tmp_path) == []  # no .bin, .idx, .meta.json, nor their temporary files


def test_output_is_identical_for_any_worker_count(tmp_path, zh_vocab_file, zh_corpus_file):
    outputs = []
    for workers in (1, 2, 3):
        prefix = tmp_path / f"w{workers}"
        preprocess(
            config(
                tmp_path,
                zh_vocab_file,
                [zh_corpus_file],
                output_prefix=str(prefix),
                workers=workers,
                chunk_bytes=64 << 10,
            )
        )
        outputs.append([Path(f"{prefix}_text_document{ext}").read_bytes() for ext in (".bin", ".idx", ".meta.json")])
    assert outputs[0] == outputs[1] == outputs[2]


def test_interrupted_run_leaves_old_dataset_and_no_temporary_files(
    tmp_path, zh_vocab_file, zh_corpus_file, monkeypatch
):
    prefix = tmp_path / "out_text_document"
    builder = IndexedDatasetBuilder(str(prefix))
    builder.add_document(np.arange(5))
    builder.finalize()
    before = {name: (tmp_path / name).read_bytes() for name in outputs_in(tmp_path)}

    calls = []
    original = IndexedDatasetBuilder.add_documents

    def interrupt_on_third_chunk(self, tokens, lengths):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        original(self, tokens, lengths)

    monkeypatch.setattr(IndexedDatasetBuilder, "add_documents", interrupt_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        preprocess(config(tmp_path, zh_vocab_file, [zh_corpus_file], workers=2, chunk_bytes=64 << 10, overwrite=True))
    assert {name: (tmp_path / name).read_bytes() for name in outputs_in(tmp_path)} == before


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killed_tool_leaves_no_whole_looking_index(tmp_path, zh_vocab_file, zh_corpus_file, sig):
    big = tmp_path / "big.txt"
    data = zh_corpus_file.read_bytes()
    # ~115 MB: several seconds of work with one worker and small chunks, so the signal lands while it tokenizes
    # even when this test is scheduled late (a loaded machine once let ~23 MB finish before the signal came).
    big.write_bytes(data * 60)
    process = subprocess.Popen(
        [
            sys.executable,
            str(TOOL),
            "--input",
            big,
            "--output-prefix",
            tmp_path / "out",
            "--vocab-file",
            zh_vocab_file,
            "--workers",
            "1",
            "--chunk-mb",
            "0.05",
            "--log-interval",
            "500",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    for line in process.stderr:  # wait until it is tokenizing
        if "documents (" in line:
            break
    process.send_signal(sig)
    remaining = process.stderr.read()
    code = process.wait(timeout=60)
    assert code != 0, remaining
    assert not (tmp_path / "out_text_document.idx").exists()
    assert not (tmp_path / "out_text_document.bin").exists()
    if sig != signal.SIGKILL:  # unwound cleanly: temporary files removed, one line on stderr
        assert outputs_in(tmp_path) == []
        assert code == 130 and "interrupted" in remaining and "Traceback" not in remaining


@pytest.mark.integration
def test_config_errors(tmp_path, zh_vocab_file, zh_corpus_file):
    with pytest.raises(ConfigError, match="no such file"):
        preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "missing.txt"]))
    with pytest.raises(ConfigError, match="matches no files"):
        preprocess(config(tmp_path, zh_vocab_file, [str(tmp_path / "*.nothing")]))
    with pytest.raises(ConfigError, match="is plain text .one document per line., so give one key"):
        preprocess(config(tmp_path, zh_vocab_file, [zh_corpus_file], json_keys=("text", "title")))
    with pytest.raises(ConfigError, match="--workers must be a positive integer, got 0"):
        config(tmp_path, zh_vocab_file, [zh_corpus_file], workers=0)
    with pytest.raises(DataFormatError, match="vocab file .* not found"):
        preprocess(config(tmp_path, tmp_path / "no_vocab.txt", [zh_corpus_file]))
    result = run_tool(
        "--input", zh_corpus_file, "--output-prefix", tmp_path / "x", "--vocab-file", tmp_path / "nope.txt", check=False
    )
    assert result.returncode == 2 and result.stderr.startswith("error: vocab file") and "fetch_assets" in result.stderr
    assert outputs_in(tmp_path) == []


@pytest.mark.integration
def test_memory_stays_bounded(tmp_path, zh_vocab_file, zh_corpus_file):
    """Chunks in flight are bounded: the main process's peak memory does not grow with the corpus."""
    script = (
        "import re, sys\n"
        "from megatron_zh.data.preprocess.pipeline import preprocess\n"
        "from megatron_zh.data.preprocess.config import PreprocessConfig\n"
        "preprocess(PreprocessConfig(inputs=[sys.argv[1]], output_prefix=sys.argv[2], vocab_file=sys.argv[3],"
        " workers=2, progress=False, chunk_bytes=1 << 18))\n"
        # VmHWM: this process's own peak (ru_maxrss would carry over the parent's peak across exec)
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    peaks = []
    for copies in (1, 16):
        corpus = tmp_path / f"c{copies}.txt"
        corpus.write_bytes(zh_corpus_file.read_bytes() * copies)
        out = subprocess.run(
            [sys.executable, "-c", script, corpus, tmp_path / f"o{copies}", zh_vocab_file],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout
        peaks.append(int(out.split()[-1]) / 1024)  # MB
    assert peaks[1] < peaks[0] + 10, f"peak RSS {peaks[0]:.0f} MB for 2 MB of input, {peaks[1]:.0f} MB for 31 MB"


@pytest.mark.integration
def test_bench_preprocess_runs(repo_root):
    """The benchmark script works end to end at a small size (its timings are not checked here)."""
    result = subprocess.run(
        [sys.executable, "bench/bench_preprocess.py", "--min-mb", "2", "--repeats", "1", "--workers", "2"],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "repeat 1: bound (tokenizers)" in result.stdout and "median of 1: preprocess" in result.stdout


@pytest.mark.integration
def test_preprocessing_does_not_import_torch():
    """Every module of data/preprocess (the driver and the workers' side), data/corpus, data/indexed and text is
    torch-free: a worker starts fast and holds no CUDA state."""
    script = (
        "import importlib, pkgutil, sys\n"
        "names = ('megatron_zh.data.corpus', 'megatron_zh.data.indexed', 'megatron_zh.data.preprocess', "
        "'megatron_zh.text')\n"
        "for package in map(importlib.import_module, names):\n"
        "    for info in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout
