"""The work done on each chunk of input: decode, parse, split into documents, filter, tokenize, frame.

A chunk is whole lines of one file or archive member (text or JSON lines), or rows of a Parquet file
(`corpus_readers` cuts them in the main process). Documents are lines, runs of non-blank lines
(`--document-boundary blank-line`), JSON records or rows; those without tokens or shorter than
`min_doc_chars` are dropped and counted, and with `dedup` the rest are hashed for the main process.

It runs in the preprocessing worker processes (or in-process with one worker), so this module and
what it imports stay free of torch: a worker starts in milliseconds and holds no CUDA state.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from megatron_zh.data.dedup import document_hashes
from megatron_zh.data.indexed_dataset import best_token_dtype
from megatron_zh.data.preprocess_config import PreprocessConfig
from megatron_zh.data.workers import die_with_parent
from megatron_zh.tokenizer import BertChineseTokenizer


@dataclass
class Chunk:
    """One task for a worker: whole lines of one unit (a file or archive member), or Parquet rows."""

    unit: int  # index of the unit in the run's list (corpus_sources.Unit)
    fmt: str  # "text", "jsonl" or "parquet"
    first_line: int  # 1-based number of the chunk's first line (row for Parquet) in its unit
    lines: list[bytes] = field(default_factory=list)  # text and JSON lines, line breaks included
    columns: dict[str, list[Any]] | None = None  # Parquet: per key, the values of the rows
    input_bytes: int = 0  # decompressed bytes
    disk_bytes: int = 0  # the share of the bytes on disk (progress)


@dataclass
class ChunkResult:
    tokens: dict[str, np.ndarray]  # per key: the framed documents, concatenated
    lengths: dict[str, np.ndarray]  # per key: tokens per kept document
    dropped_empty: dict[str, int]
    dropped_short: dict[str, int]  # fewer than min_doc_chars characters
    hashes: dict[str, np.ndarray]  # per key, with dedup: one uint64 per kept document
    unit: int = 0
    bad: list[tuple[int, int, str]] = field(default_factory=list)  # (unit index, line or row number, reason)
    input_bytes: int = 0
    disk_bytes: int = 0


class ChunkEncoder:
    """Chunk -> ChunkResult for one config; holds the tokenizer."""

    def __init__(self, config: PreprocessConfig, tokenizer: BertChineseTokenizer | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer or BertChineseTokenizer(config.vocab_file, lower_case=config.lower_case)
        self.dtype = best_token_dtype(self.tokenizer.vocab_size)

    def __call__(self, chunk: Chunk) -> ChunkResult:
        texts, blank, bad = self._documents(chunk)
        result = ChunkResult({}, {}, {}, {}, {}, chunk.unit, bad, chunk.input_bytes, chunk.disk_bytes)
        for key in self.config.json_keys:
            # Blank lines and lines of nothing but whitespace or control characters give no tokens.
            ids, lengths = self.tokenizer.encode_batch_flat(texts[key])
            keep = lengths > 0
            result.dropped_empty[key] = blank + int((~keep).sum())
            result.dropped_short[key] = 0
            if self.config.min_doc_chars:  # characters of the text as read (str length), empty ones excluded
                chars = np.fromiter(map(len, texts[key]), np.int64, len(texts[key]))
                short = keep & (chars < self.config.min_doc_chars)
                ids = ids[~np.repeat(short, lengths)]
                keep &= ~short
                result.dropped_short[key] = int(short.sum())
            if self.config.dedup:  # hashed here, in parallel; the main process keeps the set of those seen
                result.hashes[key] = document_hashes([t for t, k in zip(texts[key], keep) if k])
            result.tokens[key], result.lengths[key] = self._frame(ids, lengths[keep])
        return result

    def _documents(self, chunk: Chunk) -> tuple[dict[str, list[str]], int, list[tuple[int, int, str]]]:
        """(texts per key, records dropped as blank, bad lines or rows) of a chunk."""
        if chunk.columns is not None:
            return self._parquet_documents(chunk, chunk.columns)
        if chunk.fmt == "jsonl":
            return self._json_documents(chunk)
        bad: list[tuple[int, int, str]] = []
        lines = _decode_lines(chunk.lines)  # the common case: valid UTF-8, decoded in one call
        if lines is None:  # some line is not UTF-8: go line by line, reporting and skipping those
            lines = []
            for line_no, raw in enumerate(chunk.lines, start=chunk.first_line):
                try:
                    lines.append(raw.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as exc:
                    bad.append((chunk.unit, line_no, _utf8_problem(raw, exc)))
        if self.config.document_boundary == "blank-line":
            lines = _join_paragraphs(lines)
        # Blank lines stay in: they give no tokens and are counted as empty documents by the caller.
        return {self.config.json_keys[0]: lines}, 0, bad

    def _json_documents(self, chunk: Chunk) -> tuple[dict[str, list[str]], int, list[tuple[int, int, str]]]:
        texts: dict[str, list[str]] = {key: [] for key in self.config.json_keys}
        bad: list[tuple[int, int, str]] = []
        blank = 0
        for line_no, raw in enumerate(chunk.lines, start=chunk.first_line):
            record, reason = self._parse(raw)
            if reason is not None:
                bad.append((chunk.unit, line_no, reason))
            elif record is None:
                blank += 1
            else:
                for key in texts:
                    texts[key].append(record[key])
        return texts, blank, bad

    def _parquet_documents(
        self, chunk: Chunk, columns: dict[str, list[Any]]
    ) -> tuple[dict[str, list[str]], int, list[tuple[int, int, str]]]:
        keys = self.config.json_keys
        texts: dict[str, list[str]] = {key: [] for key in keys}
        bad: list[tuple[int, int, str]] = []
        for row, values in enumerate(zip(*(columns[key] for key in keys)), start=chunk.first_line):
            missing = next((key for key, value in zip(keys, values) if value is None), None)
            if missing is not None:
                bad.append((chunk.unit, row, f"column {missing!r} is null"))
                continue
            for key, value in zip(keys, values):
                texts[key].append(value)
        return texts, 0, bad

    def _parse(self, raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
        """A JSON line: (record, None), (None, None) for a blank line, or (None, why the line is bad)."""
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            return None, _utf8_problem(raw, exc)
        if not line.strip():
            return None, None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            return None, f"invalid JSON ({exc.msg} at column {exc.colno})"
        if not isinstance(record, dict):
            return None, f"a JSON {type(record).__name__}, not an object"
        for key in self.config.json_keys:
            if key not in record:
                return None, f"missing key {key!r}"
            if not isinstance(record[key], str):
                return None, f"key {key!r} holds a {_json_type(record[key])}, not a string"
            try:
                record[key].encode("utf-8")
            except UnicodeEncodeError as exc:  # JSON escapes can spell lone surrogates ("\ud800")
                return None, f"key {key!r} holds a lone surrogate {exc.object[exc.start]!r}, not valid Unicode"
        return record, None

    def _frame(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Put [CLS] before and [SEP] after every document, in one pass over the flat arrays."""
        lead, tail = int(self.config.prepend_cls), int(self.config.append_eod)
        framed_lengths = lengths + (lead + tail)
        out = np.empty(int(framed_lengths.sum()), dtype=self.dtype)
        ends = np.cumsum(framed_lengths)
        starts = ends - framed_lengths
        body = np.ones(out.size, dtype=bool)
        if lead:
            out[starts] = self.tokenizer.cls
            body[starts] = False
        if tail:
            out[ends - 1] = self.tokenizer.eod
            body[ends - 1] = False
        out[body] = ids
        return out, framed_lengths.astype(np.int32)


def _decode_lines(lines: list[bytes]) -> list[str] | None:
    """Plain-text lines without their line breaks, or None if any line is not UTF-8 (then go line by line)."""
    try:
        text = b"".join(lines).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.endswith("\n"):
        text = text[:-1]
    # Only \n ends a line (not str.splitlines' \u2028, \x0b, ...); a CR before it goes too.
    return text.replace("\r\n", "\n").split("\n")


def _join_paragraphs(lines: list[str]) -> list[str]:
    """Blank-line boundaries: each run of non-blank lines is one document, its lines joined with newlines."""
    documents: list[str] = []
    paragraph: list[str] = []
    for line in lines:
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            documents.append("\n".join(paragraph))
            paragraph = []
    if paragraph:
        documents.append("\n".join(paragraph))
    return documents


def _utf8_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 at byte {exc.start} ({raw[exc.start : exc.start + 4]!r})"


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", bool: "boolean", type(None): "null", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


# A worker process holds one encoder, made once by the pool initializer (the standard pattern).
_worker_encoder: ChunkEncoder | None = None


def init_worker(config: PreprocessConfig, parent_pid: int | None = None) -> None:
    global _worker_encoder
    if parent_pid is not None:
        die_with_parent(parent_pid)  # no orphans when the main process is killed (even by SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and stops the pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: no Rayon threads on top
    _worker_encoder = ChunkEncoder(config)


def encode_in_worker(chunk: Chunk) -> ChunkResult:
    assert _worker_encoder is not None
    return _worker_encoder(chunk)
