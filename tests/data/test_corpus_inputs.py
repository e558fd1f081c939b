"""Inputs as distributed: directories, globs, compressed files, zip/tar members, Parquet; blank-line documents,
--min-doc-chars, --dedup, shards merged back byte for byte (also through the SLURM array script), UTF-16/32
refused with the command that converts them, and a run that finds no documents failing.

Token ids are checked against transformers.BertTokenizer on the same documents, and every dataset is read
back with megatron-core's IndexedDataset as well as ours."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from test_preprocess import REPO, config, documents_of, framed, outputs_in, run_tool

from megatron_zh.data.corpus.formats import FORMATS, FormatName, InputFormat, recognise
from megatron_zh.data.indexed.dataset import read_metadata
from megatron_zh.data.preprocess import readers as corpus_readers
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.dedup import SeenHashes
from megatron_zh.data.preprocess.pipeline import preprocess
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.knobs import given_values, knob_fields

SLURM_SCRIPT = REPO / "launch" / "preprocess_slurm_array.sbatch"


@pytest.fixture(scope="module")
def bert(zh_vocab_file):
    from transformers import BertTokenizer

    return BertTokenizer(str(zh_vocab_file))


@pytest.fixture(scope="module")
def docs(zh_corpus_file) -> list[str]:
    """60 real CLUECorpusSmall documents, each of several lines (its sentences), as blank-line corpora hold them."""
    lines = zh_corpus_file.read_text(encoding="utf-8").split("\n")[:60]
    return ["\n".join(s + "。" for s in line.split("。") if s) for line in lines]


def megatron_documents(prefix) -> list[list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(prefix))
    return [dataset[i].tolist() for i in range(len(dataset))]


def check_dataset(prefix, bert, texts) -> None:
    """Ours and megatron-core's reader both see exactly BertTokenizer's [CLS] ... [SEP] of `texts`."""
    expected = framed(bert, texts)
    assert documents_of(prefix) == expected
    assert megatron_documents(prefix) == expected


def blank_line_text(texts: list[str]) -> bytes:
    return ("\n\n".join(texts) + "\n").encode("utf-8")


def one_per_line(texts: list[str]) -> bytes:
    return "".join(t.replace("\n", "") + "\n" for t in texts).encode("utf-8")


def json_lines(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode("utf-8")


COMPRESS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda data: __import__("zstandard").ZstdCompressor().compress(data),
}


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> None:
    """mode "w", "w:gz", ... as tarfile takes it, or "w:zst" (Python 3.11's tarfile has no zstd: compressed here)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w" if mode == "w:zst" else mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(COMPRESS[".zst"](buffer.getvalue()) if mode == "w:zst" else buffer.getvalue())


def archive_members(docs: list[str]) -> tuple[dict[str, bytes], list[str]]:
    """Members written out of name order, with junk that is skipped; and the documents in name order."""
    a, b, c = docs[:20], docs[20:35], docs[35:60]
    members = {
        "corpus/b/2.txt": blank_line_text(c),
        "corpus/a.jsonl.gz": gzip.compress(json_lines(a)),
        "corpus/b/10.txt.zst": COMPRESS[".zst"](blank_line_text(b)),
        "__MACOSX/corpus/._a.jsonl.gz": b"\x00\x05\x16\x07 resource fork",
        "corpus/.DS_Store": b"\x00\x00\x00\x01Bud1",
    }
    return members, a + b + c  # "corpus/a.jsonl.gz" < "corpus/b/10.txt.zst" < "corpus/b/2.txt"


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst", ".jsonl.zst", ".jsonl.gz"])
def test_compressed_files(tmp_path, zh_vocab_file, bert, docs, suffix):
    if suffix.startswith(".jsonl"):  # a .jsonl.zst used to be read as text: an empty dataset, exit 0
        path, data = tmp_path / f"corpus{suffix}", json_lines(docs)
    else:
        path, data = tmp_path / f"corpus.txt{suffix}", blank_line_text(docs)
    path.write_bytes(COMPRESS["." + suffix.rsplit(".", 1)[-1]](data))
    boundary = "line" if suffix.startswith(".jsonl") else "blank-line"
    stats = preprocess(config(tmp_path, zh_vocab_file, [path], workers=2, chunk_bytes=4096, document_boundary=boundary))
    check_dataset(tmp_path / "out_text_document", bert, docs)
    assert stats.documents["text"] == len(docs) and stats.bad_lines == 0


TAR_MODES = {"tar": "w", "tar.gz": "w:gz", "tgz": "w:gz", "tar.xz": "w:xz", "tar.zst": "w:zst", "tzst": "w:zst"}


@pytest.mark.parametrize("kind", ["zip", *TAR_MODES])
def test_archives_read_members_in_name_order(tmp_path, zh_vocab_file, bert, docs, kind):
    """The members are stored out of name order, so a compressed tar is also read backwards (re-decompressed)."""
    members, expected = archive_members(docs)
    path = tmp_path / f"corpus.{kind}"
    if kind == "zip":
        write_zip(path, members)
    else:
        write_tar(path, members, TAR_MODES[kind])
    preprocess(config(tmp_path, zh_vocab_file, [path], workers=2, chunk_bytes=2048, document_boundary="blank-line"))
    check_dataset(tmp_path / "out_text_document", bert, expected)
    inputs = read_metadata(tmp_path / "out_text_document")["inputs"]
    assert [i["member"] for i in inputs] == ["corpus/a.jsonl.gz", "corpus/b/10.txt.zst", "corpus/b/2.txt"]
    assert {i["path"] for i in inputs} == {str(path)}


def test_parquet_by_row_group(tmp_path, zh_vocab_file, bert, docs, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    titles = [d.split("\n")[0][:12] for d in docs]
    texts = list(docs)
    texts[7] = None  # a null is a bad row: reported with its row number and skipped
    path = tmp_path / "corpus.parquet"
    table = pa.table({"id": list(range(len(docs))), "text": texts, "title": titles})
    pq.write_table(table, path, row_group_size=9)
    assert pq.ParquetFile(path).metadata.num_row_groups == 7
    with caplog.at_level("WARNING", logger="megatron_zh"):
        stats = preprocess(
            config(tmp_path, zh_vocab_file, [path], json_keys=("text", "title"), workers=2, chunk_bytes=4096)
        )
    kept = [i for i in range(len(docs)) if i != 7]
    check_dataset(tmp_path / "out_text_document", bert, [docs[i] for i in kept])
    check_dataset(tmp_path / "out_title_document", bert, [titles[i] for i in kept])
    assert stats.bad_lines == 1
    assert any(f"{path}:row 8: column 'text' is null; row skipped" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataFormatError, match=r"no column 'body' \(columns: id, text, title\)"):
        preprocess(config(tmp_path, zh_vocab_file, [path], json_keys=("body",), output_prefix=str(tmp_path / "x")))
    with pytest.raises(DataFormatError, match="column 'id' holds int64, not strings"):
        preprocess(config(tmp_path, zh_vocab_file, [path], json_keys=("id",), output_prefix=str(tmp_path / "x")))


def test_the_formats_table_is_the_one_place_a_format_is_declared(tmp_path, zh_vocab_file):
    """Every FormatName has one table entry; names decide, a forced format applies only to streamed ones,
    and a format that needs random access is refused compressed or inside an archive, before any output."""
    assert set(FORMATS) == set(get_args(FormatName)) and all(FORMATS[n].name == n for n in FORMATS)
    assert set(get_args(InputFormat)) == {"auto"} | {n for n, spec in FORMATS.items() if spec.streamed}
    assert recognise("a.JSONL").name == "jsonl" and recognise("a.txt").name == "text"
    assert recognise("a.txt", "jsonl").name == "jsonl" and recognise("a.parquet", "text").name == "parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = io.BytesIO()
    pq.write_table(pa.table({"text": ["一", "二"]}), parquet)
    (tmp_path / "c.parquet.gz").write_bytes(gzip.compress(parquet.getvalue()))
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("inner.parquet", parquet.getvalue())
    for name, message in (("c.parquet.gz", "Parquet is read with random access"), ("a.zip", "Parquet needs random")):
        with pytest.raises(ConfigError, match=message):
            preprocess(config(tmp_path, zh_vocab_file, [tmp_path / name], output_prefix=str(tmp_path / "out")))
        assert not list(tmp_path.glob("out*"))


@pytest.mark.integration
def test_directories_globs_and_files_in_any_mix(tmp_path, zh_vocab_file, bert, docs):
    root = tmp_path / "corpus"
    (root / "b" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_bytes(one_per_line(docs[0:5]))
    (root / "b" / "deeper" / "c.txt.gz").write_bytes(gzip.compress(one_per_line(docs[5:10])))
    (root / "b" / "d.jsonl").write_bytes(json_lines(docs[10:15]))
    (root / "a-b.txt").write_bytes(one_per_line(docs[15:20]))  # "a-b.txt" < "a.txt" < "b/..."
    (root / ".hidden.txt").write_bytes(b"never read\n")
    (root / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    extra = tmp_path / "extra"
    extra.mkdir()
    for name, part in (("x1.txt", docs[20:25]), ("x2.txt", docs[25:30])):
        (extra / name).write_bytes(one_per_line(part))
    single = tmp_path / "single.txt"
    single.write_bytes(one_per_line(docs[30:35]))
    run_tool(
        "--input", single, root, extra / "x*.txt", "--output-prefix", tmp_path / "out", "--vocab-file", zh_vocab_file
    )
    order = docs[30:35] + docs[15:20] + docs[0:5] + docs[10:15] + docs[5:10] + docs[20:30]
    check_dataset(tmp_path / "out_text_document", bert, [d.replace("\n", "") for d in order])
    names = [
        Path(i["path"]).relative_to(tmp_path).as_posix()
        for i in read_metadata(tmp_path / "out_text_document")["inputs"]
    ]
    assert names == [
        "single.txt",
        "corpus/a-b.txt",
        "corpus/a.txt",
        "corpus/b/d.jsonl",
        "corpus/b/deeper/c.txt.gz",
        "extra/x1.txt",
        "extra/x2.txt",
    ]
    with pytest.raises(ConfigError, match="no such file or directory"):
        preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "nowhere"]))


def test_blank_line_documents_are_never_split_by_chunks(tmp_path, zh_vocab_file, bert, docs, monkeypatch):
    # Blank lines of every kind between documents: several, whitespace only, CRLF.
    separators = ["\n\n", "\n\n\n", "\n  \t\n", "\r\n\r\n"]
    body = "".join(d + separators[i % 4] for i, d in enumerate(docs))
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(body.encode("utf-8"))
    outputs = []
    for chunk_bytes in (64, 1000, 1 << 20):  # 64 bytes: a cut after nearly every blank line
        prefix = tmp_path / f"c{chunk_bytes}"
        stats = preprocess(
            config(
                tmp_path,
                zh_vocab_file,
                [corpus],
                output_prefix=str(prefix),
                workers=2,
                chunk_bytes=chunk_bytes,
                document_boundary="blank-line",
            )
        )
        assert stats.documents["text"] == len(docs) and stats.dropped_empty["text"] == 0
        outputs.append([Path(f"{prefix}_text_document{ext}").read_bytes() for ext in (".bin", ".idx")])
    check_dataset(tmp_path / "c64_text_document", bert, docs)  # lines joined with "\n", as BertTokenizer sees them
    assert outputs[0] == outputs[1] == outputs[2]
    # The default is a document per line: the same file gives one document per sentence.
    stats = preprocess(config(tmp_path, zh_vocab_file, [corpus], output_prefix=str(tmp_path / "lines")))
    assert stats.documents["text"] == sum(d.count("\n") + 1 for d in docs)
    # A text without blank lines is not blank-line separated: one line, not a document of the whole file.
    monkeypatch.setattr(corpus_readers, "MAX_DOCUMENT_BYTES", 2000)
    flat = tmp_path / "flat.txt"
    flat.write_bytes(one_per_line(docs))
    with pytest.raises(DataFormatError, match=r"flat.txt:1: no blank line in .* use --document-boundary line"):
        preprocess(config(tmp_path, zh_vocab_file, [flat], chunk_bytes=500, document_boundary="blank-line"))


@pytest.mark.integration
def test_min_doc_chars_and_dedup_are_counted(tmp_path, zh_vocab_file, bert, docs):
    texts = [d.replace("\n", "") for d in docs[:30]]
    short = ["短文", "ok", "十个字以内的短文本"]
    first = texts[:20] + short + [texts[3], texts[3]]  # a duplicate repeated within one chunk
    second = [texts[5]] + texts[20:] + [texts[0]]  # and in another file
    (tmp_path / "a.txt").write_bytes(one_per_line(first))
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(one_per_line(second)))
    inputs = [tmp_path / "a.txt", tmp_path / "b.txt.gz"]
    flags = ["--output-prefix", tmp_path / "out", "--vocab-file", zh_vocab_file, "--workers", 2, "--chunk-mb", 0.002]
    result = run_tool("--input", *inputs, *flags, "--min-doc-chars", 10, "--dedup")
    check_dataset(tmp_path / "out_text_document", bert, texts)
    assert "done: 30 documents, " in result.stderr
    assert "0 empty dropped, 0 bad lines, 3 short dropped, 4 duplicates dropped" in result.stderr
    meta = read_metadata(tmp_path / "out_text_document")
    assert (meta["documents"], meta["dropped_short"], meta["dropped_duplicate"], meta["dedup"]) == (30, 3, 4, True)
    assert meta["min_doc_chars"] == 10 and [Path(i["path"]).name for i in meta["inputs"]] == ["a.txt", "b.txt.gz"]
    # Without the two flags every document stays.
    run_tool("--input", *inputs, *flags[:1], tmp_path / "all", *flags[2:])
    check_dataset(tmp_path / "all_text_document", bert, first + second)


def test_seen_hashes_matches_a_python_set():
    rng = np.random.default_rng(0)
    seen, reference = SeenHashes(), set()
    for size in rng.integers(0, 400, size=300):
        batch = rng.integers(0, 20_000, size=size).astype(np.uint64)  # many repeats, within and across batches
        expected = []
        for value in batch.tolist():
            expected.append(value not in reference)
            reference.add(value)
        assert seen.add(batch).tolist() == expected
    assert len(seen) == len(reference) and seen.nbytes == 8 * len(reference)


def shard_inputs(tmp_path: Path, docs: list[str]) -> list[Path]:
    """8 units: a zip of 4 members, a plain file, a .gz and a tar of 2 members."""
    (tmp_path / "in").mkdir()
    write_zip(tmp_path / "in" / "a.zip", {f"m{i}.txt": blank_line_text(docs[i * 6 : i * 6 + 6]) for i in range(4)})
    (tmp_path / "in" / "b.txt").write_bytes(blank_line_text(docs[24:33]))
    (tmp_path / "in" / "c.txt.gz").write_bytes(gzip.compress(blank_line_text(docs[33:45])))
    write_tar(tmp_path / "in" / "d.tar", {"x.txt": blank_line_text(docs[45:50]), "y.txt": blank_line_text(docs[50:])})
    return [tmp_path / "in"]


def dataset_bytes(prefix) -> list[bytes]:
    return [Path(f"{prefix}{ext}").read_bytes() for ext in (".bin", ".idx")]


@pytest.mark.integration
def test_shards_merge_to_a_single_run_byte_for_byte(tmp_path, zh_vocab_file, bert, docs):
    inputs = shard_inputs(tmp_path, docs)
    common = ["--vocab-file", zh_vocab_file, "--workers", 1, "--document-boundary", "blank-line"]
    run_tool("--input", *inputs, "--output-prefix", tmp_path / "single", *common)
    check_dataset(tmp_path / "single_text_document", bert, docs)
    for index in range(3):  # 8 units in 3 shards: 2, 3 and 3 units
        run_tool(
            "--input", *inputs, "--output-prefix", tmp_path / "part", "--num-shards", 3, "--shard-index", index, *common
        )
    metas = [read_metadata(tmp_path / f"part_shard{i:05d}-of-00003_text_document") for i in range(3)]
    assert [len(m["inputs"]) for m in metas] == [2, 3, 3] and metas[1]["shard"] == {"index": 1, "count": 3}
    subprocess.run(
        [
            sys.executable,
            "tools/merge_datasets.py",
            "--input",
            str(tmp_path / "part_shard*-of-00003_text_document"),
            "--output-prefix",
            str(tmp_path / "merged_text_document"),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert dataset_bytes(tmp_path / "merged_text_document") == dataset_bytes(tmp_path / "single_text_document")
    # The report adds up too: the zip's 4 members, split between shards, are one input again.
    single, merged = read_metadata(tmp_path / "single_text_document"), read_metadata(tmp_path / "merged_text_document")
    assert merged["inputs"] == single["inputs"] and merged["unk"]["unk"] == single["unk"]["unk"]
    assert (
        merged["unk"]["tokens"] == single["unk"]["tokens"] and merged["unk"]["unk_share"] == single["unk"]["unk_share"]
    )
    drop_top = [[{k: v for k, v in e.items() if k != "top"} for e in m["by_input"]] for m in (single, merged)]
    assert drop_top[0] == drop_top[1] and [e["members"] for e in single["by_input"]] == [4, 0, 0, 2]
    with pytest.raises(ConfigError, match="--shard-index 3 is not below --num-shards 3"):
        config(tmp_path, zh_vocab_file, inputs, num_shards=3, shard_index=3)
    with pytest.raises(ConfigError, match="--num-shards 9 is more than the 8 input unit"):
        preprocess(config(tmp_path, zh_vocab_file, inputs, num_shards=9))


@pytest.mark.integration
def test_slurm_array_script_shards_and_merges(tmp_path, zh_vocab_file, docs):
    """The script submits an array and a dependent merge; run as those jobs, it gives the single-run dataset."""
    inputs = shard_inputs(tmp_path, docs)
    fake_sbatch = tmp_path / "sbatch"
    fake_sbatch.write_text('#!/usr/bin/env bash\necho "$@" >> "$SBATCH_LOG"\necho 4242\n')
    fake_sbatch.chmod(0o755)
    env = {
        **os.environ,
        "INPUT": " ".join(map(str, inputs)),
        "OUTPUT_PREFIX": str(tmp_path / "clue"),
        "VOCAB_FILE": str(zh_vocab_file),
        "NUM_SHARDS": "3",
        "PYTHON": sys.executable,
        "SBATCH": str(fake_sbatch),
        "SBATCH_LOG": str(tmp_path / "sbatch.log"),
    }
    for variable in ("SLURM_ARRAY_TASK_ID", "PREPROCESS_STEP", "SLURM_SUBMIT_DIR"):
        env.pop(variable, None)
    script = ["bash", str(SLURM_SCRIPT), "--document-boundary", "blank-line"]
    out = subprocess.run(script, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    assert "submitted shards as job 4242 (3 tasks)" in out
    array, merge = (tmp_path / "sbatch.log").read_text().splitlines()
    assert array.startswith("--parsable --array=0-2 ") and array.endswith(" --document-boundary blank-line")
    assert "--dependency=afterok:4242" in merge and "PREPROCESS_STEP=merge" in merge
    for index in range(3):  # what SLURM runs: each array task, then the merge
        subprocess.run(
            script, cwd=REPO, env={**env, "SLURM_ARRAY_TASK_ID": str(index)}, capture_output=True, check=True
        )
    subprocess.run(script[:2], cwd=REPO, env={**env, "PREPROCESS_STEP": "merge"}, capture_output=True, check=True)
    run_tool(
        "--input", *inputs, "--output-prefix", tmp_path / "single", "--vocab-file", zh_vocab_file,
        "--document-boundary", "blank-line",
    )  # fmt: skip
    assert dataset_bytes(tmp_path / "clue_text_document") == dataset_bytes(tmp_path / "single_text_document")
    # Run again over finished outputs: refused, unless --overwrite (the login step passes it on as OVERWRITE=1).
    shard = {**env, "SLURM_ARRAY_TASK_ID": "0"}
    again = subprocess.run(script, cwd=REPO, env=shard, capture_output=True, text=True)
    assert again.returncode == 2 and "exists; pass --overwrite to replace it" in again.stderr, again.stderr
    subprocess.run([*script, "--overwrite"], cwd=REPO, env=shard, capture_output=True, check=True)
    merge = {**env, "PREPROCESS_STEP": "merge"}
    again = subprocess.run(script[:2], cwd=REPO, env=merge, capture_output=True, text=True)
    assert again.returncode == 2 and "exists; pass --overwrite to replace it" in again.stderr, again.stderr
    subprocess.run(script[:2], cwd=REPO, env={**merge, "OVERWRITE": "1"}, capture_output=True, check=True)
    assert dataset_bytes(tmp_path / "clue_text_document") == dataset_bytes(tmp_path / "single_text_document")


WIDE = [
    ("utf-16", "UTF-16LE (it starts with that byte-order mark)", "iconv -f UTF-16 -t UTF-8"),
    ("utf-32", "UTF-32LE (it starts with that byte-order mark)", "iconv -f UTF-32 -t UTF-8"),
    ("bom-utf-16-be", "UTF-16BE (it starts with that byte-order mark)", "iconv -f UTF-16 -t UTF-8"),
    ("utf-16-le", "UTF-16LE without a byte-order mark (mostly NUL bytes)", "iconv -f UTF-16LE -t UTF-8"),
]


def wide_bytes(encoding: str) -> bytes:
    text = "Chinese GPT-2 corpus line, mostly ASCII: 中文\n" * 50
    if encoding == "bom-utf-16-be":
        return "\ufeff".encode("utf-16-be") + text.encode("utf-16-be")
    return text.encode(encoding)


@pytest.mark.integration
@pytest.mark.parametrize("encoding, seen, command", WIDE)
def test_wide_encodings_stop_the_run_with_the_fix(tmp_path, zh_vocab_file, encoding, seen, command):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(wide_bytes(encoding))
    assert refusal(tmp_path, zh_vocab_file, corpus) == (
        f"error: {corpus}: {seen}, not UTF-8; convert it first: {command} {corpus} > {tmp_path}/corpus.utf8.txt"
    )


def refusal(tmp_path: Path, vocab: Path, source: Path) -> str:
    """tools/preprocess_data.py on `source`: exit 2, no traceback, nothing written; its one error line."""
    result = run_tool("--input", source, "--output-prefix", tmp_path / "out", "--vocab-file", vocab, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert outputs_in(tmp_path) == []
    return errors[0]


def patch_zip_entries(path: Path, *, flag: int = 0, method: int | None = None) -> None:
    """Set general-purpose flag bits / the compression method in every local and central header of a zip, as
    tools Python's zipfile cannot imitate would write them (WinZip encryption, Windows' Deflate64)."""
    data = bytearray(path.read_bytes())
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = data.find(signature)
        while start != -1:
            data[start + flag_at] |= flag
            if method is not None:
                data[start + method_at : start + method_at + 2] = method.to_bytes(2, "little")
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))


@pytest.mark.integration
@pytest.mark.parametrize(
    "flag, method, message",
    [
        (0x1, None, "docs/b.txt is encrypted: this tool takes no passwords; extract the archive (unzip -P ...)"),
        (0, 9, "docs/b.txt is compressed with Deflate64, which Python's zipfile cannot read; extract the archive"),
    ],
)
def test_zip_members_that_cannot_be_read_are_refused_before_any_output(tmp_path, zh_vocab_file, flag, method, message):
    write_zip(tmp_path / "a.zip", {"docs/b.txt": b"one\ntwo\n"})
    patch_zip_entries(tmp_path / "a.zip", flag=flag, method=method)
    assert refusal(tmp_path, zh_vocab_file, tmp_path / "a.zip").startswith(f"error: {tmp_path / 'a.zip'}:{message}")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["corpus.txt.gz", "corpus.txt.bz2", "corpus.txt.xz", "corpus.jsonl.zst", "c.tar.zst"])
def test_a_truncated_compressed_input_stops_the_run(tmp_path, zh_vocab_file, docs, name):
    """A download cut short fails with one line and writes nothing, whatever the compression: zstandard's own
    reader would return the first part of a truncated .zst as if it were the whole file (exit 0, less data)."""
    data = json_lines(docs * 50) if name.endswith(".jsonl.zst") else blank_line_text(docs * 50)
    path = tmp_path / name
    if name.endswith(".tar.zst"):
        write_tar(path, {"corpus.txt": data}, "w:zst")
    else:
        path.write_bytes(COMPRESS["." + name.rsplit(".", 1)[-1]](data))
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    error = refusal(tmp_path, zh_vocab_file, path)
    assert error.startswith(f"error: {path}"), error
    assert "truncated" in error or "end-of-stream" in error or "end of data" in error, error


def test_wide_encodings_inside_archives_and_compressed_files(tmp_path, zh_vocab_file):
    write_zip(tmp_path / "a.zip", {"ok.txt": b"fine\n", "docs/wide.txt": wide_bytes("utf-16")})
    with pytest.raises(DataFormatError) as error:
        preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "a.zip"]))
    assert str(error.value) == (
        f"{tmp_path}/a.zip:docs/wide.txt: UTF-16LE (it starts with that byte-order mark), not UTF-8; convert it "
        f"first: unzip -p {tmp_path}/a.zip docs/wide.txt | iconv -f UTF-16 -t UTF-8 > {tmp_path}/wide.utf8.txt"
    )
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(wide_bytes("utf-32")))
    with pytest.raises(DataFormatError, match=r"b.jsonl.gz: UTF-32LE .* gzip -dc .*b.jsonl.gz \| iconv -f UTF-32"):
        preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "b.jsonl.gz"]))
    (tmp_path / "zeros.txt").write_bytes(b"\x00" * 5000)
    with pytest.raises(DataFormatError, match=r"zeros.txt: mostly NUL bytes \(binary data, not UTF-8 text\); leave"):
        preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "zeros.txt"]))


def test_utf8_byte_order_mark_is_dropped(tmp_path, zh_vocab_file, bert):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"text": "\xe7\xac\xac\xe4\xb8\x80"}\n{"text": "two"}\n')
    (tmp_path / "b.txt.zst").write_bytes(COMPRESS[".zst"](bom + "三\n四\n".encode()))
    stats = preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "a.jsonl", tmp_path / "b.txt.zst"]))
    check_dataset(tmp_path / "out_text_document", bert, ["第一", "two", "三", "四"])
    assert stats.bad_lines == 0


@pytest.mark.integration
def test_no_documents_is_an_error(tmp_path, zh_vocab_file, caplog):
    (tmp_path / "wrong_key.jsonl.zst").write_bytes(COMPRESS[".zst"](b'{"body": "x"}\n' * 5))
    (tmp_path / "empty.txt").write_bytes(b"\n\n  \n")
    for name, counts in (("wrong_key.jsonl.zst", "5 bad lines, 0 empty"), ("empty.txt", "0 bad lines, 3 empty")):
        result = run_tool(
            "--input", tmp_path / name, "--output-prefix", tmp_path / "out", "--vocab-file", zh_vocab_file, check=False
        )
        assert result.returncode == 2, result.stderr
        assert f"error: no documents for key 'text' in 1 input(s) ({tmp_path / name}): {counts}" in result.stderr
        assert outputs_in(tmp_path) == []
    # One empty input among others is worth a warning, not an error.
    (tmp_path / "good.txt").write_bytes(b"good\n")
    with caplog.at_level("WARNING", logger="megatron_zh"):
        preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "empty.txt", tmp_path / "good.txt"]))
    assert any(r.getMessage() == f"{tmp_path / 'empty.txt'}: no documents" for r in caplog.records)


def test_every_tool_flag_is_a_knob_that_lands_in_its_field(tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from preprocess_data import build_parser
    finally:
        sys.path.remove(str(REPO / "tools"))
    parser = build_parser()
    base = ["--input", "a.txt", "--output-prefix", "out", "--vocab-file", "v.txt"]
    defaults = PreprocessConfig(inputs=("a.txt",), output_prefix="out", vocab_file="v.txt")
    changed = {
        "inputs": ("b.txt", "c/"),
        "output_prefix": "other",
        "vocab_file": "w.txt",
        "input_format": "jsonl",
        "json_keys": ("body", "title"),
        "document_boundary": "blank-line",
        "min_doc_chars": 7,
        "dedup": True,
        "num_shards": 4,
        "shard_index": 2,
        "normalize": "punctuation",
        "prepend_cls": False,
        "append_eod": False,
        "overwrite": True,
        "workers": 3,
        "strict": True,
        "log_interval": 5,
        "max_reported_bad_lines": 9,
        "progress": False,
    }
    fields = [field for field, _ in knob_fields(PreprocessConfig)]
    assert sorted(f.name for f in fields) == sorted(changed)  # a new knob must be added here (and gets a flag)
    for field, spec in knob_fields(PreprocessConfig):
        value = changed[field.name]
        flag = spec.option or "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            argv = [flag if value else f"--no-{flag[2:]}"]
        else:
            argv = [flag, *map(str, value if isinstance(value, tuple) else (value,))]
        args = parser.parse_args(base + argv)
        values = given_values(args, PreprocessConfig)
        assert values[field.name] == value, field.name
        assert getattr(defaults, field.name) != value, field.name
        assert spec.help and parser._option_string_actions[flag].help
    with pytest.raises(SystemExit):
        parser.parse_args(["--output-prefix", "out", "--vocab-file", "v.txt"])  # --input is required


@pytest.mark.integration
def test_bench_preprocess_compressed_runs(repo_root):
    """The benchmark's --compressed case works end to end at a small size (timings are not checked here)."""
    result = subprocess.run(
        [sys.executable, "bench/bench_preprocess.py", "--compressed", "--size-mb", "2", "--repeats", "1"],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in (".txt.gz", ".txt.zst", ".zip"):
        assert f"{kind} / plain tokens/s = " in result.stdout, result.stdout
    assert "peak RSS" in result.stdout
