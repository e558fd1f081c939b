"""Merges that cannot lie: metadata required, tokenizer settings compared, outputs never over inputs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from repo_paths import REPO_ROOT as REPO

from megatron_zh.data.indexed.builder import IndexedDatasetBuilder
from megatron_zh.data.indexed.dataset import IndexedDataset, read_metadata
from megatron_zh.data.indexed.merge import merge_datasets
from megatron_zh.errors import ConfigError, DataFormatError

SETTINGS = {
    "format": "megatron_zh.preprocess/1",
    "tokenizer": "BertWordPieceLowerCase",
    "vocab_fingerprint": "sha256:aa",
    "vocab_size": 21128,
    "dtype": "uint16",
    "prepend_cls": True,
    "append_eod": True,
    "cls": 101,
    "eod": 102,
}


def dataset(prefix: Path, seed: int, **meta) -> str:
    """Five documents, with preprocessing's metadata (overridden by `meta`; missing=True: no .meta.json)."""
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(str(prefix), dtype=meta.get("dtype", "uint16"))
    for _ in range(5):
        builder.add_document(rng.integers(0, 21128, int(rng.integers(1, 50))))
    builder.finalize(None if meta.get("missing") else {**SETTINGS, **meta})
    return str(prefix)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def merge_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "tools/merge_datasets.py", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


@pytest.mark.integration
def test_an_input_without_metadata_is_refused_unless_allowed(tmp_path):
    verified = dataset(tmp_path / "verified", 1)
    bare = dataset(tmp_path / "bare", 2, missing=True)  # e.g. made by Megatron-LM's preprocess_data.py
    result = merge_tool("--input", verified, bare, "--output-prefix", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "bare.meta.json is missing" in result.stderr
    assert "--allow-missing-metadata" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*out*"))

    result = merge_tool("--input", verified, bare, "--output-prefix", str(tmp_path / "out"), "--allow-missing-metadata")
    assert result.returncode == 0, result.stderr
    meta = read_metadata(tmp_path / "out")
    # Not the verified input's fingerprint: nothing shows the bare one was tokenized with that vocab.
    assert meta["vocab_fingerprint"] is None and meta["unverified_inputs"] == [bare]
    assert "prepend_cls" not in meta and meta["documents"] == 10
    assert len(IndexedDataset(str(tmp_path / "out"))) == 10


def test_metadata_without_a_fingerprint_counts_as_missing(tmp_path):
    a = dataset(tmp_path / "a", 1)
    b = dataset(tmp_path / "b", 2, vocab_fingerprint=None)
    with pytest.raises(DataFormatError, match="names no vocab fingerprint"):
        merge_datasets([a, b], tmp_path / "out")


@pytest.mark.parametrize(
    "different, setting",
    [
        ({"vocab_fingerprint": "sha256:bb"}, "vocab fingerprint"),
        ({"tokenizer": "BertWordPieceCase"}, "lower-casing"),
        ({"prepend_cls": False}, "prepend_cls"),
        ({"append_eod": False}, "append_eod"),
        ({"dtype": "int32"}, "token dtype"),
        # A dataset whose metadata predates the field was not normalised: it does not merge with one that was.
        ({"normalization": "vocab-equivalents/1 punctuation sha256:cc"}, "text normalisation"),
    ],
)
def test_inputs_tokenized_differently_are_refused_naming_both_and_the_setting(tmp_path, different, setting):
    a = dataset(tmp_path / "a", 1)
    b = dataset(tmp_path / "b", 2, **different)
    with pytest.raises(DataFormatError) as info:
        merge_datasets([a, b], tmp_path / "out")
    message = str(info.value)
    assert a in message and b in message and setting in message
    assert not [p for p in os.listdir(tmp_path) if "out" in p]


@pytest.mark.integration
@pytest.mark.parametrize("spelling", ["{d}//a", "{d}/../{n}/a", "{link}/a", "{d}/./a"])
def test_an_output_that_is_an_input_however_spelled_is_refused(tmp_path, spelling):
    folder = tmp_path / "data"
    folder.mkdir()
    a, b = dataset(folder / "a", 1), dataset(folder / "b", 2)
    (tmp_path / "link").symlink_to(folder)
    before = files_of(folder)
    output = spelling.format(d=folder, n=folder.name, link=tmp_path / "link")
    assert os.path.realpath(output + ".bin") == os.path.realpath(a + ".bin")
    result = merge_tool("--input", a, b, "--output-prefix", output)
    assert result.returncode == 2 and "is " in result.stderr and "of input" in result.stderr, result.stderr
    assert files_of(folder) == before


def test_an_output_hard_linked_to_an_input_is_refused(tmp_path):
    a, b = dataset(tmp_path / "a", 1), dataset(tmp_path / "b", 2)
    os.link(a + ".idx", tmp_path / "out.idx")
    with pytest.raises(DataFormatError, match="out.idx, which is .*a.idx of input"):
        merge_datasets([a, b], tmp_path / "out")


def test_merging_a_dataset_with_itself_warns(tmp_path, caplog):
    a = dataset(tmp_path / "a", 1)
    with caplog.at_level(logging.WARNING):
        meta = merge_datasets([a, str(tmp_path / "." / "a")], tmp_path / "twice")
    assert meta["documents"] == 10
    assert any("merged more than once" in r.getMessage() for r in caplog.records), caplog.text


def test_an_existing_output_is_refused_unless_overwrite(tmp_path):
    a, b = dataset(tmp_path / "a", 1), dataset(tmp_path / "b", 2)
    merge_datasets([a], tmp_path / "out")
    before = files_of(tmp_path)
    with pytest.raises(ConfigError) as error:
        merge_datasets([a, b], tmp_path / "out")
    assert str(error.value) == (
        f"output {tmp_path}/out.bin exists; pass --overwrite to replace it (it is replaced only after the new one "
        "is complete)"
    )
    assert files_of(tmp_path) == before
    assert merge_datasets([a, b], tmp_path / "out", overwrite=True)["documents"] == 10
    assert len(IndexedDataset(str(tmp_path / "out"))) == 10


@pytest.mark.parametrize("output", ["", "folder", "folder/"])
def test_an_output_prefix_that_is_empty_or_a_folder_is_refused(tmp_path, output):
    a = dataset(tmp_path / "a", 1)
    (tmp_path / "folder").mkdir()
    prefix = str(tmp_path / output) if output else ""
    with pytest.raises(ConfigError, match=f"--output-prefix {prefix!r} (is empty|names a directory); give a path"):
        merge_datasets([a], prefix)
    assert os.listdir(tmp_path / "folder") == []


@pytest.mark.integration
def test_the_tool_refuses_an_existing_output_and_replaces_it_with_overwrite(tmp_path):
    a, b = dataset(tmp_path / "a", 1), dataset(tmp_path / "b", 2)
    assert merge_tool("--input", a, "--output-prefix", str(tmp_path / "out")).returncode == 0
    before = files_of(tmp_path)
    result = merge_tool("--input", a, b, "--output-prefix", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        f"error: output {tmp_path}/out.bin exists; pass --overwrite to replace it (it is replaced only after the "
        "new one is complete)"
    )
    assert files_of(tmp_path) == before
    result = merge_tool("--input", a, b, "--output-prefix", str(tmp_path / "out"), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert read_metadata(tmp_path / "out")["documents"] == 10
