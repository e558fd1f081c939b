"""The work done on each chunk of input lines: decode, parse, tokenize, frame.

It runs in the preprocessing worker processes (or in-process with one worker), so this module and
what it imports stay free of torch: a worker starts in milliseconds and holds no CUDA state.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megatron_zh.data.indexed_dataset import best_token_dtype
from megatron_zh.data.preprocess_config import PreprocessConfig
from megatron_zh.data.workers import die_with_parent
from megatron_zh.tokenizer import BertChineseTokenizer


@dataclass
class Chunk:
    """Whole lines of one input file, about `chunk_bytes` of them: one task for a worker."""

    file_index: int
    first_line: int  # 1-based number of the chunk's first line in its file
    lines: list[bytes]


@dataclass
class ChunkResult:
    tokens: dict[str, np.ndarray]  # per key: the framed documents, concatenated
    lengths: dict[str, np.ndarray]  # per key: tokens per kept document
    dropped_empty: dict[str, int]
    bad: list[tuple[int, int, str]] = field(default_factory=list)  # (file index, line number, reason)
    input_bytes: int = 0


def read_chunks(files: list[Path], chunk_bytes: int) -> Iterator[Chunk]:
    """The files in order, as chunks of whole lines (read in the main process)."""
    for file_index, path in enumerate(files):
        with open(path, "rb") as f:
            line_no = 1
            while lines := f.readlines(chunk_bytes):
                yield Chunk(file_index, line_no, lines)
                line_no += len(lines)


class ChunkEncoder:
    """Chunk -> ChunkResult for one config; holds the tokenizer."""

    def __init__(
        self, config: PreprocessConfig, json_files: list[bool], tokenizer: BertChineseTokenizer | None = None
    ) -> None:
        self.config = config
        self.json_files = json_files
        self.tokenizer = tokenizer or BertChineseTokenizer(config.vocab_file, lower_case=config.lower_case)
        self.dtype = best_token_dtype(self.tokenizer.vocab_size)

    def __call__(self, chunk: Chunk) -> ChunkResult:
        keys = self.config.json_keys
        texts: dict[str, list[str]] = {key: [] for key in keys}
        bad: list[tuple[int, int, str]] = []
        blank = 0
        plain = None if self.json_files[chunk.file_index] else _decode_lines(chunk.lines)
        if plain is not None:  # the common case: valid UTF-8 text, decoded in one call
            texts[keys[0]] = plain
        else:
            for line_no, raw in enumerate(chunk.lines, start=chunk.first_line):
                record, reason = self._parse(raw, self.json_files[chunk.file_index])
                if reason is not None:
                    bad.append((chunk.file_index, line_no, reason))
                elif record is None:
                    blank += 1
                else:
                    for key in keys:
                        texts[key].append(record[key])
        result = ChunkResult({}, {}, {}, bad, sum(map(len, chunk.lines)))
        for key in keys:
            # Blank lines and lines of nothing but whitespace or control characters give no tokens.
            ids, lengths = self.tokenizer.encode_batch_flat(texts[key])
            keep = lengths > 0
            result.dropped_empty[key] = blank + int((~keep).sum())
            result.tokens[key], result.lengths[key] = self._frame(ids, lengths[keep])
        return result

    def _parse(self, raw: bytes, is_json: bool) -> tuple[dict[str, Any] | None, str | None]:
        """(record, None), (None, None) for a blank line, or (None, why the line is bad)."""
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            return None, f"invalid UTF-8 at byte {exc.start} ({raw[exc.start : exc.start + 4]!r})"
        if not line.strip():
            return None, None
        if not is_json:
            return {self.config.json_keys[0]: line}, None
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


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", bool: "boolean", type(None): "null", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


# A worker process holds one encoder, made once by the pool initializer (the standard pattern).
_worker_encoder: ChunkEncoder | None = None


def init_worker(config: PreprocessConfig, json_files: list[bool], parent_pid: int | None = None) -> None:
    global _worker_encoder
    if parent_pid is not None:
        die_with_parent(parent_pid)  # no orphans when the main process is killed (even by SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and stops the pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: no Rayon threads on top
    _worker_encoder = ChunkEncoder(config, json_files)


def encode_in_worker(chunk: Chunk) -> ChunkResult:
    assert _worker_encoder is not None
    return _worker_encoder(chunk)
