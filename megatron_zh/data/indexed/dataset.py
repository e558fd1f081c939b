"""Megatron's MMIDIDX v1 indexed dataset: the file format, its validated memory-mapped reader, and
the PREFIX.meta.json sidecar. The writer is `indexed_builder`, the merge step `merge`.

On disk (the layout megatron-core's `IndexedDataset` reads and writes, little-endian):

    PREFIX.idx   b"MMIDIDX\\x00\\x00"  9 bytes   magic
                 version           uint64    always 1
                 dtype code        uint8     1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
                                             7 float32, 8 uint16
                 sequence count S  uint64
                 document count D  uint64    number of documents + 1
                 sequence_lengths  int32[S]  tokens per sequence
                 sequence_pointers int64[S]  byte offset of each sequence in PREFIX.bin
                 document_indices  int64[D]  first sequence of each document, then S
    PREFIX.bin   the tokens of every sequence, back to back, in the dtype above

A document is one or more sequences; preprocessing writes one sequence per document. Opening a
pair checks it completely (header, sizes, pointers, document index, .bin size) so a truncated,
corrupt or mismatched pair raises `DataFormatError` instead of yielding wrong tokens.

The writer (`indexed_builder.IndexedDatasetBuilder`) writes PREFIX.bin and PREFIX.idx under
temporary names and renames them into place only in `finalize()`, .idx last: a PREFIX.idx on disk
always belongs to a complete PREFIX.bin.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from megatron_zh.errors import DataFormatError
from megatron_zh.fileio import atomic_write, read_json_object

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_SIZE = len(INDEX_MAGIC) + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence and document counts

# Megatron's DType enum: the numeric code stored in the header for each token dtype.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_OF_DTYPE: dict[np.dtype, int] = {dtype: code for code, dtype in DTYPE_CODES.items()}

# Validation, writing and merging walk the index in slices this long: memory stays bounded however
# large the corpus.
SLICE_ELEMENTS = 1 << 20


def data_file_path(prefix: str | os.PathLike[str]) -> str:
    return f"{os.fspath(prefix)}.bin"


def index_file_path(prefix: str | os.PathLike[str]) -> str:
    return f"{os.fspath(prefix)}.idx"


def metadata_file_path(prefix: str | os.PathLike[str]) -> str:
    return f"{os.fspath(prefix)}.meta.json"


def best_token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits with Megatron's margin (vocab below 65500), else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def dataset_exists(prefix: str | os.PathLike[str]) -> bool:
    return os.path.isfile(index_file_path(prefix)) and os.path.isfile(data_file_path(prefix))


class IndexedDataset:
    """Read side: PREFIX.bin/.idx memory-mapped and fully validated on open.

    `dataset[i]` is sequence i as a read-only numpy view of the .bin; `get(i, offset, length)`
    a slice of it. Pickles as its path (DataLoader workers re-open the files).
    """

    path_prefix: str
    dtype: np.dtype
    sequence_lengths: np.ndarray  # int32 [sequences], a view of the .idx
    sequence_pointers: np.ndarray  # int64 [sequences]: byte offsets into the .bin
    document_indices: np.ndarray  # int64 [documents + 1]: first sequence of each document

    def __init__(self, path_prefix: str | os.PathLike[str]) -> None:
        self.path_prefix = os.fspath(path_prefix)
        self._open()

    # -- opening and validation -------------------------------------------------------------

    def _open(self) -> None:
        idx_path, bin_path = index_file_path(self.path_prefix), data_file_path(self.path_prefix)
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise DataFormatError(
                    f"{path}: file not found (an indexed dataset needs both {idx_path} and {bin_path})"
                )
        idx_size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            header = f.read(HEADER_SIZE)
        if len(header) < len(INDEX_MAGIC) or header[: len(INDEX_MAGIC)] != INDEX_MAGIC:
            raise DataFormatError(
                f"{idx_path}: not a Megatron MMIDIDX index (bad magic {header[:9]!r}, expected {INDEX_MAGIC!r})"
            )
        if len(header) < HEADER_SIZE:
            raise DataFormatError(f"{idx_path}: truncated header ({idx_size} bytes, the header alone is {HEADER_SIZE})")
        version, code, num_sequences, count = struct.unpack("<QBQQ", header[len(INDEX_MAGIC) :])
        if version != INDEX_VERSION:
            raise DataFormatError(
                f"{idx_path}: unsupported index version {version} (only version {INDEX_VERSION} exists)"
            )
        if code not in DTYPE_CODES:
            raise DataFormatError(f"{idx_path}: unknown token dtype code {code} (known: {sorted(DTYPE_CODES)})")
        self.dtype = DTYPE_CODES[code]
        if count < 1:
            raise DataFormatError(f"{idx_path}: document count {count} in the header; a valid index has at least 1")
        expected = HEADER_SIZE + 12 * num_sequences + 8 * count
        if idx_size != expected:
            extra = (
                " (a multimodal index with sequence modes, which this reader does not support)"
                if (idx_size == expected + num_sequences and num_sequences)
                else ""
            )
            raise DataFormatError(
                f"{idx_path}: size {idx_size} bytes does not match its header ({num_sequences} sequences, "
                f"{count - 1} documents need {expected} bytes){extra}; the file is truncated or corrupt"
            )
        self._index = np.memmap(idx_path, dtype=np.uint8, mode="r")
        self.sequence_lengths = np.frombuffer(self._index, np.int32, num_sequences, HEADER_SIZE)
        self.sequence_pointers = np.frombuffer(self._index, np.int64, num_sequences, HEADER_SIZE + 4 * num_sequences)
        self.document_indices = np.frombuffer(self._index, np.int64, count, HEADER_SIZE + 12 * num_sequences)

        bin_size = os.path.getsize(bin_path)
        self._check_index(idx_path, bin_path, bin_size)
        # np.memmap cannot map an empty file; an empty dataset gets an empty array instead.
        self._data = (
            np.memmap(bin_path, dtype=self.dtype, mode="r").view(np.ndarray)
            if bin_size
            else np.empty(0, dtype=self.dtype)
        )

    def _check_index(self, idx_path: str, bin_path: str, bin_size: int) -> None:
        itemsize = self.dtype.itemsize
        lengths, pointers, documents = self.sequence_lengths, self.sequence_pointers, self.document_indices
        if documents[0] != 0 or documents[-1] != len(lengths):
            raise DataFormatError(
                f"{idx_path}: document index must run from 0 to the sequence count {len(lengths)}, "
                f"found {documents[0]} .. {documents[-1]}; the index is corrupt"
            )
        for start in range(0, len(documents) - 1, SLICE_ELEMENTS):
            step = np.diff(documents[start : start + SLICE_ELEMENTS + 1])
            if (step < 0).any():
                bad = start + int(np.argmax(step < 0))
                raise DataFormatError(
                    f"{idx_path}: document index is not monotonic at document {bad} "
                    f"({documents[bad]} then {documents[bad + 1]}); the index is corrupt"
                )
        end = 0  # byte offset where the next sequence must start: sequences are stored back to back
        for start in range(0, len(lengths), SLICE_ELEMENTS):
            chunk_lengths = lengths[start : start + SLICE_ELEMENTS].astype(np.int64)
            chunk_pointers = pointers[start : start + SLICE_ELEMENTS]
            if (chunk_lengths < 0).any():
                bad = start + int(np.argmax(chunk_lengths < 0))
                raise DataFormatError(
                    f"{idx_path}: sequence {bad} has negative length {lengths[bad]}; the index is corrupt"
                )
            ends = end + np.cumsum(chunk_lengths * itemsize)
            expected_pointers = np.concatenate(([end], ends[:-1]))
            if (chunk_pointers != expected_pointers).any():
                bad = int(np.argmax(chunk_pointers != expected_pointers))
                raise DataFormatError(
                    f"{idx_path}: sequence {start + bad} points at byte {chunk_pointers[bad]} of {bin_path}, "
                    f"expected {expected_pointers[bad]} (sequences are stored back to back); the index is corrupt"
                )
            if len(ends) and ends[-1] > bin_size:
                bad = int(np.argmax(ends > bin_size))
                raise DataFormatError(
                    f"{idx_path}: sequence {start + bad} ends at byte {ends[bad]} but {bin_path} has only {bin_size} "
                    "bytes; the .bin is truncated or belongs to another index"
                )
            end = int(ends[-1]) if len(ends) else end
        if end != bin_size:
            raise DataFormatError(
                f"{bin_path}: {bin_size} bytes, but {idx_path} describes {end} bytes "
                f"({end // itemsize} {self.dtype.name} tokens); the .bin and .idx do not belong together"
            )

    # -- access ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    @property
    def num_tokens(self) -> int:
        return len(self._data)

    def _position(self, idx: int) -> tuple[int, int]:
        """(first token, length) of sequence idx, with Python's negative indexing."""
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"sequence {idx} out of range for {self.path_prefix} ({n} sequences)")
        idx %= n
        return int(self.sequence_pointers[idx]) // self.dtype.itemsize, int(self.sequence_lengths[idx])

    def __getitem__(self, idx: int | np.integer | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise ValueError("slices of an IndexedDataset must be contiguous (step 1)")
            if start >= stop:
                return []
            first, _ = self._position(start)
            lengths = self.sequence_lengths[start:stop]
            tokens = self._data[first : first + int(lengths.sum(dtype=np.int64))]
            return np.split(tokens, np.cumsum(lengths[:-1], dtype=np.int64))
        if isinstance(idx, (int, np.integer)):
            first, length = self._position(int(idx))
            return self._data[first : first + length]
        raise TypeError(f"IndexedDataset indices must be integers or slices, not {type(idx).__name__}")

    def tokens_of(self, start: int, stop: int) -> np.ndarray:
        """The tokens of sequences [start, stop) as one array (a view of the memory map: nothing is read yet)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"sequences [{start}, {stop}) out of range for {self.path_prefix} ({len(self)} sequences)")
        if start == stop:
            return self._data[:0]
        first, _ = self._position(start)
        return self._data[first : first + int(self.sequence_lengths[start:stop].sum(dtype=np.int64))]

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset + length) of sequence idx (to its end when length is None)."""
        first, size = self._position(int(idx))
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(
                f"tokens [{offset}, {offset + length}) out of range for sequence {idx} of length {size} "
                f"in {self.path_prefix}"
            )
        return self._data[first + offset : first + offset + length]

    def __repr__(self) -> str:
        return (
            f"IndexedDataset({self.path_prefix!r}, sequences={len(self)}, documents={self.num_documents}, "
            f"tokens={self.num_tokens}, dtype={self.dtype.name})"
        )

    # A memmap pickles as a full copy of its data; workers re-open (and re-check) the files instead.
    def __getstate__(self) -> dict[str, str]:
        return {"path_prefix": self.path_prefix}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.path_prefix = state["path_prefix"]
        self._open()


def write_metadata(prefix: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Write PREFIX.meta.json atomically (sorted keys, so identical runs give identical files)."""
    with atomic_write(metadata_file_path(prefix), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def read_metadata(prefix: str | os.PathLike[str]) -> dict[str, Any] | None:
    """PREFIX.meta.json as a dict, or None if the dataset has none (e.g. made by Megatron-LM)."""
    path = metadata_file_path(prefix)
    if not os.path.lexists(path):
        return None
    return read_json_object(path, DataFormatError, fix="delete it or re-run preprocessing")
