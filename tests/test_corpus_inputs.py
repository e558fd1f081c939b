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

import numpy as np
import pytest
from test_preprocess import REPO, config, documents_of, framed, outputs_in, run_tool

from megatron_zh.data import corpus_readers
from megatron_zh.data.dedup import SeenHashes
from megatron_zh.data.indexed_dataset import read_metadata
from megatron_zh.data.preprocess import preprocess
from megatron_zh.data.preprocess_config import PreprocessConfig
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
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


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
    stats = preprocess(
        config(tmp_path, zh_vocab_file, [path], workers=2, chunk_bytes=4096, document_boundary=boundary)
    )
    check_dataset(tmp_path / "out_text_document", bert, docs)
    assert stats.documents["text"] == len(docs) and stats.bad_lines == 0


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tgz"])
def test_archives_read_members_in_name_order(tmp_path, zh_vocab_file, bert, docs, kind):
    members, expected = archive_members(docs)
    path = tmp_path / f"corpus.{kind}"
    if kind == "zip":
        write_zip(path, members)
    else:
        write_tar(path, members, "w" if kind == "tar" else "w:gz")
    preprocess(
        config(tmp_path, zh_vocab_file, [path], workers=2, chunk_bytes=2048, document_boundary="blank-line")
    )
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
    names = [Path(i["path"]).relative_to(tmp_path).as_posix() for i in read_metadata(tmp_path / "out_text_document")["inputs"]]
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
