"""Megatron MMIDIDX .bin/.idx: round trip, megatron-core interoperability both ways, merge, and
every way a pair can be corrupt giving a DataFormatError that names the file and the fault."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
from repo_paths import REPO_ROOT

from megatron_zh.data.indexed.builder import IndexedDatasetBuilder
from megatron_zh.data.indexed.dataset import (
    HEADER_SIZE,
    IndexedDataset,
    best_token_dtype,
    data_file_path,
    index_file_path,
    read_metadata,
    write_metadata,
)
from megatron_zh.data.indexed.merge import merge_datasets
from megatron_zh.errors import DataFormatError


@pytest.fixture(scope="module")
def megatron_indexed():
    """megatron-core's reader and writer (the reference implementation of the format)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def random_documents(seed: int, count: int = 200, vocab: int = 21128) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Include empty documents and long ones: both are legal in the format.
    return [rng.integers(0, vocab, int(rng.choice([0, 1, rng.integers(2, 400)]))) for _ in range(count)]


def write(prefix, documents, dtype=np.uint16, **kwargs) -> str:
    builder = IndexedDatasetBuilder(str(prefix), dtype=dtype)
    for document in documents:
        builder.add_document(document)
    builder.finalize(**kwargs)
    return str(prefix)


def assert_same_documents(dataset, documents) -> None:
    assert len(dataset) == len(documents)
    for i, expected in enumerate(documents):
        np.testing.assert_array_equal(dataset[i], expected)


def test_round_trip(tmp_path):
    documents = random_documents(0)
    prefix = write(tmp_path / "corpus", documents)
    dataset = IndexedDataset(prefix)
    assert sorted(os.listdir(tmp_path)) == ["corpus.bin", "corpus.idx"]
    assert dataset.dtype == np.uint16
    assert_same_documents(dataset, documents)
    assert dataset.num_documents == len(documents)
    assert dataset.num_tokens == sum(len(d) for d in documents)
    np.testing.assert_array_equal(dataset.sequence_lengths, [len(d) for d in documents])
    np.testing.assert_array_equal(dataset.document_indices, np.arange(len(documents) + 1))
    assert dataset.sequence_lengths.dtype == np.int32 and dataset.sequence_pointers.dtype == np.int64
    # get() with offsets, negative indexing, contiguous slices
    long = next(i for i, d in enumerate(documents) if len(d) > 20)
    np.testing.assert_array_equal(dataset.get(long, 5, 10), documents[long][5:15])
    np.testing.assert_array_equal(dataset.get(long, 7), documents[long][7:])
    np.testing.assert_array_equal(dataset[-1], documents[-1])
    for got, expected in zip(dataset[3:9], documents[3:9]):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(IndexError):
        dataset[len(documents)]
    with pytest.raises(IndexError, match="out of range"):
        dataset.get(long, 5, len(documents[long]))
    # Pickles as its path: a DataLoader worker gets the same tokens without copying the data.
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 500
    np.testing.assert_array_equal(clone[long], documents[long])


def test_bulk_add_and_multi_sequence_documents(tmp_path):
    documents = random_documents(1, count=50)
    builder = IndexedDatasetBuilder(str(tmp_path / "bulk"))
    builder.add_documents(np.concatenate(documents), [len(d) for d in documents])
    builder.add_document(np.arange(10), lengths=[3, 0, 7])  # one document of three sequences
    builder.finalize()
    dataset = IndexedDataset(str(tmp_path / "bulk"))
    assert_same_documents(dataset, documents + [np.arange(3), np.arange(0), np.arange(3, 10)])
    assert dataset.num_documents == 51
    assert dataset.document_indices[-2:].tolist() == [50, 53]


def test_dtypes(tmp_path):
    assert best_token_dtype(21128) == np.uint16 and best_token_dtype(65499) == np.uint16
    assert best_token_dtype(65500) == np.int32
    documents = random_documents(2, count=20, vocab=200_000)
    assert_same_documents(IndexedDataset(write(tmp_path / "wide", documents, dtype=np.int32)), documents)
    with pytest.raises(ValueError, match="does not fit in uint16"):
        IndexedDatasetBuilder(str(tmp_path / "narrow")).add_document([1, 70000])
    with pytest.raises(ValueError, match="does not fit in uint16"):
        IndexedDatasetBuilder(str(tmp_path / "negative")).add_document([-1])


def test_empty_dataset(tmp_path):
    dataset = IndexedDataset(write(tmp_path / "empty", []))
    assert len(dataset) == 0 and dataset.num_tokens == 0 and dataset.document_indices.tolist() == [0]


def test_megatron_core_reads_ours(tmp_path, megatron_indexed):
    documents = random_documents(3)
    prefix = write(tmp_path / "ours", documents)
    builder = IndexedDatasetBuilder(str(tmp_path / "ours_multi"))
    builder.add_document(np.arange(12), lengths=[5, 7])
    builder.add_document(np.arange(4))
    builder.finalize()

    theirs = megatron_indexed.IndexedDataset(prefix)
    assert len(theirs) == len(documents)
    for i, expected in enumerate(documents):
        np.testing.assert_array_equal(theirs[i], expected)
    np.testing.assert_array_equal(theirs.document_indices, np.arange(len(documents) + 1))
    multi = megatron_indexed.IndexedDataset(str(tmp_path / "ours_multi"))
    np.testing.assert_array_equal(multi.document_indices, [0, 2, 3])
    np.testing.assert_array_equal(multi.get(1, 2, 3), [7, 8, 9])


def test_we_read_megatron_core(tmp_path, megatron_indexed):
    import torch

    documents = random_documents(4)
    for dtype in (np.uint16, np.int32):
        prefix = str(tmp_path / f"theirs_{np.dtype(dtype).name}")
        builder = megatron_indexed.IndexedDatasetBuilder(data_file_path(prefix), dtype=dtype)
        for document in documents:
            builder.add_document(torch.from_numpy(document), [len(document)])
        builder.add_document(torch.arange(9), [4, 5])
        builder.finalize(index_file_path(prefix))
        ours = IndexedDataset(prefix)
        assert ours.dtype == dtype
        assert_same_documents(ours, documents + [np.arange(4), np.arange(4, 9)])
        assert ours.document_indices[-2:].tolist() == [len(documents), len(documents) + 2]


@pytest.mark.integration
def test_merge(tmp_path, megatron_indexed):
    parts = [random_documents(seed, count=30) for seed in (5, 6, 7)]
    prefixes = []
    for i, documents in enumerate(parts):
        prefix = write(tmp_path / f"part_{i}", documents)
        write_metadata(prefix, {"vocab_fingerprint": "sha256:aa", "append_eod": True, "documents": 30})
        prefixes.append(prefix)
    meta = merge_datasets(prefixes, tmp_path / "merged")
    everything = [d for documents in parts for d in documents]
    assert_same_documents(IndexedDataset(str(tmp_path / "merged")), everything)
    assert meta["documents"] == 90 and meta["tokens"] == sum(len(d) for d in everything)
    assert read_metadata(tmp_path / "merged")["vocab_fingerprint"] == "sha256:aa"
    # megatron-core agrees on the merged file
    theirs = megatron_indexed.IndexedDataset(str(tmp_path / "merged"))
    np.testing.assert_array_equal(theirs[45], everything[45])

    # The command-line tool with a glob gives byte-identical files.
    result = subprocess.run(
        [
            sys.executable,
            "tools/merge_datasets.py",
            "--input",
            str(tmp_path / "part_*"),
            "--output-prefix",
            str(tmp_path / "merged_cli"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    for path in (data_file_path, index_file_path):
        assert open(path(tmp_path / "merged_cli"), "rb").read() == open(path(tmp_path / "merged"), "rb").read()


def test_merge_refuses_mismatched_inputs(tmp_path):
    a = write(tmp_path / "a", random_documents(8, count=5))
    b = write(tmp_path / "b", random_documents(9, count=5))
    write_metadata(a, {"vocab_fingerprint": "sha256:aa"})
    write_metadata(b, {"vocab_fingerprint": "sha256:bb"})
    with pytest.raises(DataFormatError, match="vocab fingerprint differs"):
        merge_datasets([a, b], tmp_path / "out")
    wide = write(tmp_path / "wide", random_documents(10, count=5), dtype=np.int32)
    write_metadata(wide, {"vocab_fingerprint": "sha256:bb"})
    with pytest.raises(DataFormatError, match="token dtype differs.*uint16.*int32"):
        merge_datasets([b, wide], tmp_path / "out2")
    assert not any(name.startswith(("out", ".out")) for name in os.listdir(tmp_path))


def test_writer_leaves_nothing_until_finalize(tmp_path):
    prefix = str(tmp_path / "partial")
    with pytest.raises(RuntimeError):
        with IndexedDatasetBuilder(prefix) as builder:
            builder.add_document(np.arange(100))
            assert not os.path.exists(index_file_path(prefix)) and not os.path.exists(data_file_path(prefix))
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []

    # Finalizing over an existing dataset replaces it whole.
    write(prefix, [np.arange(5)])
    write(prefix, [np.arange(7), np.arange(2)], metadata={"documents": 2})
    assert_same_documents(IndexedDataset(prefix), [np.arange(7), np.arange(2)])
    assert sorted(os.listdir(tmp_path)) == ["partial.bin", "partial.idx", "partial.meta.json"]


@pytest.mark.integration
def test_writer_memory_does_not_grow_with_the_number_of_documents(tmp_path):
    """The index arrays are spilled to disk while writing and streamed into the .idx in slices of 1 M
    entries: 8 M documents peak no higher than 2 M. (Kept in memory, the extra 6 M would add
    6 M x (4 + 8) bytes, about twice over while the index is written: ~140 MB.)"""
    script = (
        "import re, sys\n"
        "import numpy as np\n"
        "from megatron_zh.data.indexed.builder import IndexedDatasetBuilder\n"
        "from megatron_zh.data.indexed.dataset import IndexedDataset\n"
        "documents, prefix = int(sys.argv[1]), sys.argv[2]\n"
        "with IndexedDatasetBuilder(prefix) as builder:\n"
        "    for _ in range(documents // 100_000):\n"
        "        builder.add_documents(np.full(200_000, 7, dtype=np.uint16), np.full(100_000, 2))\n"
        "peak = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "dataset = IndexedDataset(prefix)\n"
        "assert len(dataset) == documents and dataset.num_tokens == 2 * documents, dataset\n"
        "assert dataset[documents - 1].tolist() == [7, 7] and int(dataset.document_indices[-1]) == documents\n"
        "print(peak)\n"
    )
    peaks = []
    for documents in (2_000_000, 8_000_000):
        out = subprocess.run(
            [sys.executable, "-c", script, str(documents), str(tmp_path / f"d{documents}")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        peaks.append(int(out.split()[-1]) / 1024)  # MB
    assert peaks[1] < peaks[0] + 10, f"peak RSS {peaks[0]:.0f} MB for 2 M documents, {peaks[1]:.0f} MB for 8 M"


def test_metadata(tmp_path):
    prefix = tmp_path / "m"
    assert read_metadata(prefix) is None
    write_metadata(prefix, {"vocab_fingerprint": "sha256:00", "tokens": 3, "name": "中文"})
    assert read_metadata(prefix) == {"vocab_fingerprint": "sha256:00", "tokens": 3, "name": "中文"}
    (tmp_path / "m.meta.json").write_text("{not json")
    with pytest.raises(DataFormatError, match=r"m\.meta\.json:1:2: not valid JSON: .*; delete it or re-run"):
        read_metadata(prefix)
    (tmp_path / "m.meta.json").write_text("[1, 2]")
    with pytest.raises(DataFormatError, match="holds a JSON array, not an object"):
        read_metadata(prefix)
    (tmp_path / "m.meta.json").write_text('{\n  "tokens": 3,\n  "documents": 1,\n  "tokens": 30\n}\n')
    with pytest.raises(DataFormatError, match=r'm\.meta\.json: key "tokens" is written twice \(lines 2 and 4\)'):
        read_metadata(prefix)


# ---- corruption: each case must name the file and say what is wrong ------------------------------

DOCUMENTS = [np.arange(i * 10, i * 10 + n) for i, n in enumerate([5, 0, 12, 3, 8])]
NUM_SEQUENCES = len(DOCUMENTS)
LENGTHS_AT = HEADER_SIZE
POINTERS_AT = HEADER_SIZE + 4 * NUM_SEQUENCES
DOCUMENTS_AT = HEADER_SIZE + 12 * NUM_SEQUENCES


def _patch(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _truncate(path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


CORRUPTIONS = {
    "bad magic": ("idx", lambda p: _patch(p, 0, b"NOTMMIDX"), r"bad magic"),
    "bad version": ("idx", lambda p: _patch(p, 9, struct.pack("<Q", 2)), r"unsupported index version 2"),
    "bad dtype code": ("idx", lambda p: _patch(p, 17, bytes([42])), r"unknown token dtype code 42"),
    "wrong dtype code": ("idx", lambda p: _patch(p, 17, bytes([4])), r"sequence 1 points at byte 10 .* expected 20"),
    "truncated header": ("idx", lambda p: _truncate(p, 20), r"truncated header"),
    "empty idx": ("idx", lambda p: _truncate(p, 0), r"bad magic"),
    "truncated idx": (
        "idx",
        lambda p: _truncate(p, os.path.getsize(p) - 8),
        r"size \d+ bytes does not match its header",
    ),
    "sequence count too large": (
        "idx",
        lambda p: _patch(p, 18, struct.pack("<Q", 6)),
        r"does not match its header \(6 sequences",
    ),
    "document count too large": ("idx", lambda p: _patch(p, 26, struct.pack("<Q", 7)), r"does not match its header"),
    "trailing bytes (multimodal)": ("idx", lambda p: _append(p, bytes(NUM_SEQUENCES)), r"multimodal"),
    "negative length": (
        "idx",
        lambda p: _patch(p, LENGTHS_AT + 4, struct.pack("<i", -3)),
        r"sequence 1 has negative length",
    ),
    "length beyond bin": (
        "idx",
        lambda p: _patch(p, LENGTHS_AT + 16, struct.pack("<i", 9)),
        r"sequence 4 ends at byte 58 .* only 56",
    ),
    "pointer moved": (
        "idx",
        lambda p: _patch(p, POINTERS_AT + 16, struct.pack("<q", 4)),
        r"sequence 2 points at byte 4 .* expected 10",
    ),
    "pointer beyond bin": (
        "idx",
        lambda p: _patch(p, POINTERS_AT + 32, struct.pack("<q", 10**9)),
        r"sequence 4 points at byte 1000000000",
    ),
    "document index not monotonic": (
        "idx",
        lambda p: _patch(p, DOCUMENTS_AT + 16, struct.pack("<q", 0)),
        r"not monotonic at document 1",
    ),
    "document index not starting at 0": (
        "idx",
        lambda p: _patch(p, DOCUMENTS_AT, struct.pack("<q", 1)),
        r"must run from 0",
    ),
    "document index past the end": (
        "idx",
        lambda p: _patch(p, DOCUMENTS_AT + 40, struct.pack("<q", 9)),
        r"must run from 0 to the sequence count 5",
    ),
    "truncated bin": ("bin", lambda p: _truncate(p, 40), r"ends at byte \d+ but .*corrupt\.bin has only 40 bytes"),
    "bin too long": ("bin", lambda p: _append(p, b"\x00\x00"), r"corrupt\.bin: 58 bytes, but .*describes 56 bytes"),
    "missing bin": ("bin", os.unlink, r"corrupt\.bin: file not found"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corruption_is_reported(tmp_path, case):
    which, damage, message = CORRUPTIONS[case]
    prefix = write(tmp_path / "corrupt", DOCUMENTS)
    IndexedDataset(prefix)  # intact first
    damage(index_file_path(prefix) if which == "idx" else data_file_path(prefix))
    with pytest.raises(DataFormatError, match=message) as info:
        IndexedDataset(prefix)
    assert "corrupt." + which in str(info.value) or "corrupt.idx" in str(info.value)


def test_mismatched_pair_is_reported(tmp_path):
    """The .bin of another run beside an index: its size gives it away."""
    a = write(tmp_path / "a", [np.arange(6), np.arange(4)])
    write(tmp_path / "c", [np.arange(11)])
    os.replace(data_file_path(tmp_path / "c"), data_file_path(a))
    with pytest.raises(DataFormatError, match=r"a\.bin: 22 bytes, but .*a\.idx describes 20 bytes"):
        IndexedDataset(a)
