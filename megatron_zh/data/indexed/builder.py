"""The write side of Megatron's MMIDIDX .bin/.idx (layout: `indexed_dataset`): a crash-safe builder.

PREFIX.bin and PREFIX.idx are written under temporary names and renamed into place only in
`finalize()`, .idx last: a PREFIX.idx on disk always belongs to a complete PREFIX.bin.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from megatron_zh.data.indexed.dataset import (
    CODE_OF_DTYPE,
    INDEX_MAGIC,
    INDEX_VERSION,
    SLICE_ELEMENTS,
    IndexedDataset,
    data_file_path,
    index_file_path,
    metadata_file_path,
    write_metadata,
)
from megatron_zh.errors import DataFormatError
from megatron_zh.fileio import commit, remove_stale_temporaries, temporary_sibling
from megatron_zh.log import get_logger
from megatron_zh.storage import naming

logger = get_logger(__name__)


class IndexedDatasetBuilder:
    """Write side: append documents, then `finalize()` renames PREFIX.bin and PREFIX.idx into place.

    Until `finalize()` everything lives under hidden temporary names beside PREFIX; `abort()` (or
    leaving a `with` block by an exception) deletes them. Tokens are range-checked against the
    dtype: an id that does not fit raises instead of wrapping around.

    The index arrays go to two temporary spill files as documents arrive (int32 sequence lengths,
    int64 sequences per document) and are streamed into the .idx in slices, so memory stays flat
    however many documents the dataset has.
    """

    def __init__(self, path_prefix: str | os.PathLike[str], dtype: DTypeLike = np.uint16) -> None:
        self.path_prefix = os.fspath(path_prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"token dtype {self.dtype} is not one Megatron's index format can store")
        idx_path = index_file_path(self.path_prefix)
        bin_path = data_file_path(self.path_prefix)
        self._closed = True  # until every file below is open: abort() and __del__ have nothing to do
        temporaries: list[Path] = []
        files: list[IO[bytes]] = []
        with naming(bin_path):
            Path(self.path_prefix).parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(self.path_prefix)
            try:
                for path in (bin_path, idx_path + ".lengths", idx_path + ".documents"):
                    temporaries.append(temporary_sibling(path))
                    files.append(open(temporaries[-1], "wb"))
            except BaseException:  # e.g. a full disk after the first file: leave none of them
                for f in files:
                    f.close()
                for tmp in temporaries:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                raise
        # The tokens (renamed to PREFIX.bin by finalize()) and the two index spill files: int32 tokens
        # per sequence, int64 sequences per document.
        self._bin_tmp, self._lengths_tmp, self._document_sizes_tmp = temporaries
        self._bin, self._lengths, self._document_sizes = files
        self._num_sequences = 0
        self._num_documents = 0
        self._pending_lengths: list[int] = []
        self._pending_sizes: list[int] = []
        self._limits = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        self._closed = False

    def __enter__(self) -> IndexedDatasetBuilder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.finalize()

    def _as_tokens(self, tokens: ArrayLike) -> np.ndarray:
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

    def add_document(self, tokens: ArrayLike, lengths: Sequence[int] | None = None) -> None:
        """Append one document; `lengths` splits it into several sequences (default: one)."""
        self._check_open()
        array = self._as_tokens(tokens)
        if lengths is None:
            lengths = [array.size]
        elif sum(lengths) != array.size or any(n < 0 for n in lengths):
            raise ValueError(f"sequence lengths {list(lengths)} do not add up to the document's {array.size} tokens")
        with naming(data_file_path(self.path_prefix)):
            self._bin.write(array.tobytes())
            self._pending_lengths.extend(int(n) for n in lengths)
            self._pending_sizes.append(len(lengths))
            if len(self._pending_sizes) >= 65536:
                self._flush_pending()

    def add_documents(self, tokens: ArrayLike, document_lengths: ArrayLike) -> None:
        """Append many one-sequence documents at once: `tokens` is their concatenation."""
        self._check_open()
        array = self._as_tokens(tokens)
        lengths = np.asarray(document_lengths, dtype=np.int64)
        if int(lengths.sum()) != array.size or (lengths < 0).any():
            raise ValueError(f"document lengths add up to {int(lengths.sum())}, but {array.size} tokens were given")
        with naming(data_file_path(self.path_prefix)):
            self._flush_pending()
            self._bin.write(array.tobytes())
            self._append_index(lengths, np.ones(lengths.size, dtype=np.int64))

    def add_index(self, other_prefix: str | os.PathLike[str]) -> None:
        """Append every document of the (validated) dataset at `other_prefix`: the merge step."""
        self._check_open()
        other = IndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise DataFormatError(
                f"{index_file_path(other_prefix)} stores {other.dtype.name} tokens but this merge writes "
                f"{self.dtype.name}; merge only datasets made with the same vocab"
            )
        with naming(data_file_path(self.path_prefix)):
            self._flush_pending()
            for start in range(0, other.num_documents, SLICE_ELEMENTS):  # slices: the other index may be huge
                documents = other.document_indices[start : start + SLICE_ELEMENTS + 1]
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

    def finalize(self, metadata: dict[str, Any] | None = None) -> None:
        """Write the index and move PREFIX.bin, PREFIX.meta.json (if given), then PREFIX.idx into place.

        A stale PREFIX.idx is removed first, so no moment exists where an old index sits beside a
        new .bin; the new .idx appears last, when everything it describes is on disk. If a step fails
        (a full disk, ...), what this call already put in place is removed again: no partial dataset.
        """
        self._check_open()
        final_bin, final_idx = data_file_path(self.path_prefix), index_file_path(self.path_prefix)
        replacing: list[str] = []  # final names removed again if a later step fails
        idx_tmp: Path | None = None
        try:
            with naming(final_bin):
                self._flush_pending()
                self._bin.flush()
                os.fsync(self._bin.fileno())
                for f in (self._bin, self._lengths, self._document_sizes):
                    f.close()
            idx_tmp = temporary_sibling(final_idx)
            with naming(final_idx):
                self._write_index(idx_tmp)
                # From here the old dataset (if any) is gone: a failure leaves no piece of either.
                replacing = [final_bin] + ([metadata_file_path(self.path_prefix)] if metadata is not None else [])
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(final_idx)
            with naming(final_bin):
                commit(self._bin_tmp, final_bin)
            if metadata is not None:
                write_metadata(self.path_prefix, metadata)
            with naming(final_idx):
                commit(idx_tmp, final_idx)
        except BaseException:
            for path in [idx_tmp, *replacing]:
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            raise
        finally:
            self._closed = True
            self._close_files()
            self._remove_temporaries()

    def _write_index(self, path: Path) -> None:
        """Header, then the three arrays, each streamed from the spill files one slice at a time."""
        with open(path, "wb") as f:
            f.write(INDEX_MAGIC)
            f.write(
                struct.pack(
                    "<QBQQ", INDEX_VERSION, CODE_OF_DTYPE[self.dtype], self._num_sequences, self._num_documents + 1
                )
            )
            with open(self._lengths_tmp, "rb") as lengths:
                shutil.copyfileobj(lengths, f, 16 << 20)
            end = 0
            for chunk in _read_slices(self._lengths_tmp, np.int32):
                ends = end + np.cumsum(chunk.astype(np.int64) * self.dtype.itemsize)
                f.write(np.concatenate(([end], ends[:-1])).astype(np.int64).tobytes())
                end = int(ends[-1])
            first_sequence = 0
            f.write(np.int64(0).tobytes())
            for chunk in _read_slices(self._document_sizes_tmp, np.int64):
                starts = first_sequence + np.cumsum(chunk)
                f.write(starts.astype(np.int64).tobytes())
                first_sequence = int(starts[-1])

    def _remove_temporaries(self) -> None:
        # The .bin is already renamed when finalized.
        for path in (self._bin_tmp, self._lengths_tmp, self._document_sizes_tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def abort(self) -> None:
        """Discard everything written so far; PREFIX.bin/.idx on disk are left as they were."""
        if self._closed:
            return
        self._closed = True
        self._close_files()
        self._remove_temporaries()

    def _close_files(self) -> None:
        for f in (self._bin, self._lengths, self._document_sizes):
            with contextlib.suppress(OSError):  # close() flushes, and a full disk fails that: drop the data
                f.close()

    def __del__(self) -> None:
        # A builder dropped without finalize() leaves no temporary file behind.
        with contextlib.suppress(Exception):
            self.abort()


def _remove_stale_temporaries(prefix: str) -> None:
    """Temporaries of a killed run into `prefix` (the writer's and `atomic_write`'s): removed, with a log line."""
    idx = index_file_path(prefix)
    for name in (data_file_path(prefix), idx, idx + ".lengths", idx + ".documents", metadata_file_path(prefix)):
        for path in remove_stale_temporaries(name):
            logger.info("removed %s, a temporary file left by a killed run (its process is gone)", path)


def _read_slices(path: str | os.PathLike[str], dtype: DTypeLike) -> Iterator[np.ndarray]:
    """The array stored in `path`, SLICE_ELEMENTS elements at a time (never all of it in memory)."""
    itemsize = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        while chunk := f.read(SLICE_ELEMENTS * itemsize):
            yield np.frombuffer(chunk, dtype=dtype)
