"""Megatron's MMIDIDX v1 indexed dataset: a validated memory-mapped reader and a crash-safe writer.

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

The writer writes PREFIX.bin and PREFIX.idx under temporary names and renames them into place only
in `finalize()`, .idx last: a PREFIX.idx on disk always belongs to a complete PREFIX.bin.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from megatron_zh.errors import DataFormatError
from megatron_zh.fileio import atomic_write, commit, temporary_sibling

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
_CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}

# Validation walks the index in slices this long, so opening a huge corpus needs bounded memory.
_CHECK_CHUNK = 1 << 20


def data_file_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.bin"


def index_file_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.idx"


def metadata_file_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.meta.json"


def best_token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits with Megatron's margin (vocab below 65500), else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def dataset_exists(prefix: str | os.PathLike) -> bool:
    return os.path.isfile(index_file_path(prefix)) and os.path.isfile(data_file_path(prefix))


class IndexedDataset:
    """Read side: PREFIX.bin/.idx memory-mapped and fully validated on open.

    `dataset[i]` is sequence i as a read-only numpy view of the .bin; `get(i, offset, length)`
    a slice of it. Pickles as its path (DataLoader workers re-open the files).
    """

    def __init__(self, path_prefix: str | os.PathLike) -> None:
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
        for start in range(0, len(documents) - 1, _CHECK_CHUNK):
            step = np.diff(documents[start : start + _CHECK_CHUNK + 1])
            if (step < 0).any():
                bad = start + int(np.argmax(step < 0))
                raise DataFormatError(
                    f"{idx_path}: document index is not monotonic at document {bad} "
                    f"({documents[bad]} then {documents[bad + 1]}); the index is corrupt"
                )
        end = 0  # byte offset where the next sequence must start: sequences are stored back to back
        for start in range(0, len(lengths), _CHECK_CHUNK):
            chunk_lengths = lengths[start : start + _CHECK_CHUNK].astype(np.int64)
            chunk_pointers = pointers[start : start + _CHECK_CHUNK]
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

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset + length) of sequence idx (to its end when length is None)."""
        first, size = self._position(int(idx))
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(
                f"tokens [{offset}, {offset + length}) out of range for sequence {idx} of length {size} in {self.path_prefix}"
            )
        return self._data[first + offset : first + offset + length]

    def __repr__(self) -> str:
        return (
            f"IndexedDataset({self.path_prefix!r}, sequences={len(self)}, documents={self.num_documents}, "
            f"tokens={self.num_tokens}, dtype={self.dtype.name})"
        )

    # A memmap pickles as a full copy of its data; workers re-open (and re-check) the files instead.
    def __getstate__(self) -> dict:
        return {"path_prefix": self.path_prefix}

    def __setstate__(self, state: dict) -> None:
        self.path_prefix = state["path_prefix"]
        self._open()


class IndexedDatasetBuilder:
    """Write side: append documents, then `finalize()` renames PREFIX.bin and PREFIX.idx into place.

    Until `finalize()` everything lives under hidden temporary names beside PREFIX; `abort()` (or
    leaving a `with` block by an exception) deletes them. Tokens are range-checked against the
    dtype: an id that does not fit raises instead of wrapping around.

    The index arrays go to two temporary spill files as documents arrive (int32 sequence lengths,
    int64 sequences per document) and are streamed into the .idx in slices, so memory stays flat
    however many documents the dataset has.
    """

    def __init__(self, path_prefix: str | os.PathLike, dtype=np.uint16) -> None:
        self.path_prefix = os.fspath(path_prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF_DTYPE:
            raise ValueError(f"token dtype {self.dtype} is not one Megatron's index format can store")
        Path(self.path_prefix).parent.mkdir(parents=True, exist_ok=True)
        idx_path = index_file_path(self.path_prefix)
        self._temporaries = [
            temporary_sibling(data_file_path(self.path_prefix)),
            temporary_sibling(idx_path + ".lengths"),
            temporary_sibling(idx_path + ".documents"),
        ]
        self._bin_tmp = self._temporaries[0]
        self._bin, self._lengths, self._document_sizes = (open(path, "wb") for path in self._temporaries)
        self._num_sequences = 0
        self._num_documents = 0
        self._pending_lengths: list[int] = []
        self._pending_sizes: list[int] = []
        self._limits = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        self._closed = False

    def __enter__(self) -> IndexedDatasetBuilder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.finalize()

    def _as_tokens(self, tokens) -> np.ndarray:
        array = np.asarray(tokens)
        if array.ndim != 1:
            array = array.reshape(-1)
        if self._limits is not None and array.size and array.dtype != self.dtype:
            low, high = int(array.min()), int(array.max())
            if low < self._limits.min or high > self._limits.max:
                raise ValueError(
                    f"token id {low if low < self._limits.min else high} does not fit in {self.dtype.name} "
                    f"(range {self._limits.min}..{self._limits.max}); build with a wider dtype"
                )
        return array.astype(self.dtype, copy=False)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"IndexedDatasetBuilder for {self.path_prefix} is already finalized or aborted")

    def add_document(self, tokens, lengths: Sequence[int] | None = None) -> None:
        """Append one document; `lengths` splits it into several sequences (default: one)."""
        self._check_open()
        array = self._as_tokens(tokens)
        if lengths is None:
            lengths = [array.size]
        elif sum(lengths) != array.size or any(n < 0 for n in lengths):
            raise ValueError(f"sequence lengths {list(lengths)} do not add up to the document's {array.size} tokens")
        self._bin.write(array.tobytes())
        self._pending_lengths.extend(int(n) for n in lengths)
        self._pending_sizes.append(len(lengths))
        if len(self._pending_sizes) >= 65536:
            self._flush_pending()

    def add_documents(self, tokens, document_lengths) -> None:
        """Append many one-sequence documents at once: `tokens` is their concatenation."""
        self._check_open()
        array = self._as_tokens(tokens)
        lengths = np.asarray(document_lengths, dtype=np.int64)
        if int(lengths.sum()) != array.size or (lengths < 0).any():
            raise ValueError(f"document lengths add up to {int(lengths.sum())}, but {array.size} tokens were given")
        self._flush_pending()
        self._bin.write(array.tobytes())
        self._append_index(lengths, np.ones(lengths.size, dtype=np.int64))

    def add_index(self, other_prefix: str | os.PathLike) -> None:
        """Append every document of the (validated) dataset at `other_prefix`: the merge step."""
        self._check_open()
        other = IndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise DataFormatError(
                f"{index_file_path(other_prefix)} stores {other.dtype.name} tokens but this merge writes "
                f"{self.dtype.name}; merge only datasets made with the same vocab"
            )
        self._flush_pending()
        for start in range(0, other.num_documents, _CHECK_CHUNK):  # slices: the other index may be huge
            documents = other.document_indices[start : start + _CHECK_CHUNK + 1]
            self._append_index(other.sequence_lengths[documents[0] : documents[-1]], np.diff(documents))
        with open(data_file_path(other_prefix), "rb") as f:
            shutil.copyfileobj(f, self._bin, 16 << 20)
        del other

    def _append_index(self, sequence_lengths: np.ndarray, sequences_per_document: np.ndarray) -> None:
        if sequence_lengths.size and int(np.max(sequence_lengths)) > np.iinfo(np.int32).max:
            raise ValueError("a sequence longer than 2**31 - 1 tokens does not fit the index format")
        self._lengths.write(np.asarray(sequence_lengths, dtype=np.int32).tobytes())
        self._document_sizes.write(np.asarray(sequences_per_document, dtype=np.int64).tobytes())
        self._num_sequences += int(sequence_lengths.size)
        self._num_documents += int(sequences_per_document.size)

    def _flush_pending(self) -> None:
        if self._pending_sizes:
            self._append_index(
                np.array(self._pending_lengths, dtype=np.int64), np.array(self._pending_sizes, dtype=np.int64)
            )
            self._pending_lengths, self._pending_sizes = [], []

    @property
    def num_documents(self) -> int:
        return self._num_documents + len(self._pending_sizes)

    @property
    def num_tokens(self) -> int:
        return self._bin.tell() // self.dtype.itemsize

    def finalize(self, metadata: dict | None = None) -> None:
        """Write the index and move PREFIX.bin, PREFIX.meta.json (if given), then PREFIX.idx into place.

        A stale PREFIX.idx is removed first, so no moment exists where an old index sits beside a
        new .bin; the new .idx appears last, when everything it describes is on disk.
        """
        self._check_open()
        self._flush_pending()
        self._bin.flush()
        os.fsync(self._bin.fileno())
        for f in (self._bin, self._lengths, self._document_sizes):
            f.close()
        idx_tmp = temporary_sibling(index_file_path(self.path_prefix))
        try:
            self._write_index(idx_tmp)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(index_file_path(self.path_prefix))
            commit(self._bin_tmp, data_file_path(self.path_prefix))
            if metadata is not None:
                write_metadata(self.path_prefix, metadata)
            commit(idx_tmp, index_file_path(self.path_prefix))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(idx_tmp)
            raise
        finally:
            self._closed = True
            self._remove_temporaries()

    def _write_index(self, path: Path) -> None:
        """Header, then the three arrays, each streamed from the spill files one slice at a time."""
        lengths_file, documents_file = self._temporaries[1:]
        with open(path, "wb") as f:
            f.write(INDEX_MAGIC)
            f.write(
                struct.pack(
                    "<QBQQ", INDEX_VERSION, _CODE_OF_DTYPE[self.dtype], self._num_sequences, self._num_documents + 1
                )
            )
            with open(lengths_file, "rb") as lengths:
                shutil.copyfileobj(lengths, f, 16 << 20)
            end = 0
            for chunk in _read_slices(lengths_file, np.int32):
                ends = end + np.cumsum(chunk.astype(np.int64) * self.dtype.itemsize)
                f.write(np.concatenate(([end], ends[:-1])).astype(np.int64).tobytes())
                end = int(ends[-1])
            first_sequence = 0
            f.write(np.int64(0).tobytes())
            for chunk in _read_slices(documents_file, np.int64):
                starts = first_sequence + np.cumsum(chunk)
                f.write(starts.astype(np.int64).tobytes())
                first_sequence = int(starts[-1])

    def _remove_temporaries(self) -> None:
        for path in self._temporaries:  # the .bin is already renamed when finalized
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def abort(self) -> None:
        """Discard everything written so far; PREFIX.bin/.idx on disk are left as they were."""
        if self._closed:
            return
        self._closed = True
        for f in (self._bin, self._lengths, self._document_sizes):
            f.close()
        self._remove_temporaries()

    def __del__(self) -> None:
        # A builder dropped without finalize() leaves no temporary file behind.
        with contextlib.suppress(Exception):
            self.abort()


def _read_slices(path: str | os.PathLike, dtype) -> Iterator[np.ndarray]:
    """The array stored in `path`, _CHECK_CHUNK elements at a time (never all of it in memory)."""
    itemsize = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        while chunk := f.read(_CHECK_CHUNK * itemsize):
            yield np.frombuffer(chunk, dtype=dtype)


def expand_prefixes(patterns: Iterable[str]) -> list[str]:
    """Dataset prefixes from prefixes or globs of them (`shards/part_*`), each glob sorted."""
    prefixes: list[str] = []
    for pattern in patterns:
        pattern = re.sub(r"\.(bin|idx)$", "", pattern)
        if glob.has_magic(pattern):
            found = sorted(path[: -len(".idx")] for path in glob.glob(index_file_path(pattern)))
            if not found:
                raise DataFormatError(f"no dataset matches {pattern!r} (looked for {index_file_path(pattern)})")
            prefixes.extend(found)
        else:
            prefixes.append(pattern)
    return prefixes


def merge_datasets(input_prefixes: Iterable[str | os.PathLike], output_prefix: str | os.PathLike) -> dict:
    """Concatenate datasets (in the order given) into one; returns the merged metadata.

    Inputs must share a token dtype and, where they have metadata, the vocab fingerprint and framing.
    """
    input_prefixes = [os.fspath(p) for p in input_prefixes]
    if not input_prefixes:
        raise DataFormatError("nothing to merge: give at least one input prefix")
    if os.fspath(output_prefix) in input_prefixes:
        raise DataFormatError(f"output prefix {output_prefix} is also an input; choose a new prefix")
    first = IndexedDataset(input_prefixes[0])
    dtype = first.dtype
    del first
    metas = [read_metadata(p) for p in input_prefixes]
    merged = _merge_metadata(input_prefixes, metas)
    with IndexedDatasetBuilder(output_prefix, dtype=dtype) as builder:
        for prefix in input_prefixes:
            builder.add_index(prefix)
        merged.update(documents=builder.num_documents, tokens=builder.num_tokens, merged_from=input_prefixes)
        builder.finalize(merged)
    return merged


def _merge_metadata(prefixes: list[str], metas: list[dict | None]) -> dict:
    """Keys that describe how the tokens were made must agree; counts are recomputed by the caller."""
    merged: dict = {}
    for key in ("vocab_fingerprint", "vocab_size", "append_eod", "prepend_cls", "eod", "cls", "dtype"):
        values = {json.dumps(m[key]) for m in metas if m is not None and key in m}
        if len(values) > 1:
            found = ", ".join(f"{p}: {m.get(key)!r}" for p, m in zip(prefixes, metas) if m is not None)
            raise DataFormatError(f"cannot merge datasets with different {key!r} ({found})")
        if values:
            merged[key] = json.loads(values.pop())
    return merged


def write_metadata(prefix: str | os.PathLike, meta: dict) -> None:
    """Write PREFIX.meta.json atomically (sorted keys, so identical runs give identical files)."""
    with atomic_write(metadata_file_path(prefix), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def read_metadata(prefix: str | os.PathLike) -> dict | None:
    """PREFIX.meta.json as a dict, or None if the dataset has none (e.g. made by Megatron-LM)."""
    path = metadata_file_path(prefix)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not valid JSON ({exc}); delete it or re-run preprocessing") from exc
    if not isinstance(meta, dict):
        raise DataFormatError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    return meta
