"""Corpus -> Megatron .bin/.idx: parallel, streaming, deterministic, and safe to interrupt.

The main process reads the inputs in chunks of whole lines (about `chunk_bytes` each) and hands
them to `workers` processes; at most two chunks per worker are in flight, so memory stays flat
however large the corpus. Results are written in input order, so the output is byte-identical
whatever the worker count. Each document becomes `[CLS] tokens [SEP]` (either end optional).

Bad lines (invalid UTF-8, invalid JSON, a missing or non-string key) are reported with file and
line number and skipped, or stop the run with `strict`. Outputs are written under temporary names
and renamed only at the end (.idx last), so a failed or interrupted run leaves no .idx behind.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import glob
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megatron_zh.data.indexed_dataset import IndexedDatasetBuilder, best_token_dtype, data_file_path, index_file_path
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.log import get_logger
from megatron_zh.tokenizer import BertChineseTokenizer

logger = get_logger(__name__)

METADATA_FORMAT = "megatron_zh.preprocess/1"
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
TOKENIZER_TYPES = {"BertWordPieceLowerCase": True, "BertWordPieceCase": False}  # Megatron's names -> lower_case


@dataclass(frozen=True)
class PreprocessConfig:
    inputs: Sequence[str]  # files or glob patterns
    output_prefix: str  # writes {output_prefix}_{key}_document.bin/.idx/.meta.json per JSON key
    vocab_file: str
    json_keys: Sequence[str] = ("text",)
    input_format: str = "auto"  # "auto" (by extension: .json/.jsonl/.ndjson are JSON lines), "text", "jsonl"
    workers: int = 1
    prepend_cls: bool = True
    append_eod: bool = True  # [SEP] ends each document
    lower_case: bool = True
    strict: bool = False  # stop at the first bad line instead of skipping it
    chunk_bytes: int = 1 << 20
    log_interval: int = 100_000  # documents between progress lines when stderr is not a terminal
    max_reported_bad_lines: int = 100
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("no --input given")
        if self.input_format not in ("auto", "text", "jsonl"):
            raise ConfigError(f"input format {self.input_format!r}: choose auto, text or jsonl")
        if not self.json_keys or len(set(self.json_keys)) != len(self.json_keys):
            raise ConfigError(f"--json-keys {list(self.json_keys)}: give one or more distinct keys")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: must be at least 1")
        if self.chunk_bytes < 1 or self.log_interval < 1:
            raise ConfigError("chunk size and log interval must be positive")


@dataclass
class PreprocessStats:
    outputs: dict[str, str]  # json key -> dataset prefix
    documents: dict[str, int]
    tokens: dict[str, int]
    dropped_empty: dict[str, int]
    bad_lines: int = 0
    input_bytes: int = 0
    seconds: float = 0.0


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron's naming: one dataset per JSON key, PREFIX_{key}_document."""
    return f"{output_prefix}_{key}_document"


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files named or matched (each glob sorted, so runs are reproducible); errors for anything missing."""
    files: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise ConfigError(f"--input {pattern!r} matches no files")
            files.extend(Path(p) for p in matches)
        elif os.path.isfile(pattern):
            files.append(Path(pattern))
        else:
            raise ConfigError(f"--input {pattern}: no such file")
    return files


# ---- the work done on each chunk (in a worker process, or in-process with one worker) -------------


@dataclass
class _Chunk:
    file_index: int
    first_line: int  # 1-based number of the chunk's first line in its file
    lines: list[bytes]


@dataclass
class _ChunkResult:
    tokens: dict[str, np.ndarray]  # per key: the framed documents, concatenated
    lengths: dict[str, np.ndarray]  # per key: tokens per kept document
    dropped_empty: dict[str, int]
    bad: list[tuple[int, int, str]] = field(default_factory=list)  # (file index, line number, reason)
    input_bytes: int = 0


class _ChunkEncoder:
    def __init__(self, config: PreprocessConfig, json_files: list[bool], tokenizer: BertChineseTokenizer | None = None):
        self.config = config
        self.json_files = json_files
        self.tokenizer = tokenizer or BertChineseTokenizer(config.vocab_file, lower_case=config.lower_case)
        self.dtype = best_token_dtype(self.tokenizer.vocab_size)

    def __call__(self, chunk: _Chunk) -> _ChunkResult:
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
        result = _ChunkResult({}, {}, {}, bad, sum(map(len, chunk.lines)))
        for key in keys:
            # Blank lines and lines of nothing but whitespace or control characters give no tokens.
            ids, lengths = self.tokenizer.encode_batch_flat(texts[key])
            keep = lengths > 0
            result.dropped_empty[key] = blank + int((~keep).sum())
            result.tokens[key], result.lengths[key] = self._frame(ids, lengths[keep])
        return result

    def _parse(self, raw: bytes, is_json: bool) -> tuple[dict | None, str | None]:
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


def _json_type(value) -> str:
    return {dict: "object", list: "array", bool: "boolean", type(None): "null", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


# A worker process holds one encoder, made once by the pool initializer (the standard pattern).
_worker_encoder: _ChunkEncoder | None = None


def _init_worker(config: PreprocessConfig, json_files: list[bool]) -> None:
    global _worker_encoder
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and stops the pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: no Rayon threads on top
    _worker_encoder = _ChunkEncoder(config, json_files)


def _encode_in_worker(chunk: _Chunk) -> _ChunkResult:
    assert _worker_encoder is not None
    return _worker_encoder(chunk)


# ---- the driver -------------------------------------------------------------------------------


def _read_chunks(files: list[Path], chunk_bytes: int) -> Iterator[_Chunk]:
    for file_index, path in enumerate(files):
        with open(path, "rb") as f:
            line_no = 1
            while lines := f.readlines(chunk_bytes):
                yield _Chunk(file_index, line_no, lines)
                line_no += len(lines)


def _ordered_results(encode, chunks: Iterator[_Chunk], workers: int, pool) -> Iterator[_ChunkResult]:
    """Results in input order, with at most 2 chunks per worker submitted and not yet consumed."""
    if pool is None:
        yield from map(encode, chunks)
        return
    in_flight: collections.deque = collections.deque()
    for chunk in chunks:
        in_flight.append(pool.submit(encode, chunk))
        if len(in_flight) >= 2 * workers:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


class _Progress:
    """tqdm bar on a terminal (bytes-based ETA), periodic log lines otherwise."""

    def __init__(self, total_bytes: int, config: PreprocessConfig) -> None:
        self.total_bytes, self.config = total_bytes, config
        self.start = time.perf_counter()
        self.bytes = self.documents = self.tokens = 0
        self.next_log = config.log_interval
        self.bar = None
        if config.progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="preprocess",
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def update(self, nbytes: int, documents: int, tokens: int) -> None:
        self.bytes += nbytes
        self.documents += documents
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"{self.documents / elapsed:,.0f} docs/s, {self.tokens / elapsed / 1e6:.2f} M tokens/s", refresh=False
            )
            self.bar.update(nbytes)
        elif self.config.progress and self.documents >= self.next_log:
            self.next_log = (self.documents // self.config.log_interval + 1) * self.config.log_interval
            rate = self.bytes / elapsed
            eta = (self.total_bytes - self.bytes) / rate if rate else float("inf")
            logger.info(
                "%s documents (%.0f/s), %s tokens (%.2f M/s), %.1f/%.1f MB (%.1f MB/s), ETA %s",
                f"{self.documents:,}",
                self.documents / elapsed,
                f"{self.tokens:,}",
                self.tokens / elapsed / 1e6,
                self.bytes / 1e6,
                self.total_bytes / 1e6,
                rate / 1e6,
                _format_seconds(eta),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _format_seconds(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill` (SIGTERM) unwinds like Ctrl-C, so temporary outputs are removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def preprocess(config: PreprocessConfig) -> PreprocessStats:
    """Tokenize `config.inputs` into one Megatron dataset per JSON key; returns counts and timing."""
    files = expand_inputs(config.inputs)
    json_files = [
        config.input_format == "jsonl" or (config.input_format == "auto" and path.suffix.lower() in JSON_SUFFIXES)
        for path in files
    ]
    if not all(json_files) and len(config.json_keys) != 1:
        plain = next(path for path, is_json in zip(files, json_files) if not is_json)
        raise ConfigError(
            f"--json-keys {list(config.json_keys)}: {plain} is plain text (one document per line), so give one key"
        )
    tokenizer = BertChineseTokenizer(config.vocab_file, lower_case=config.lower_case)
    dtype = best_token_dtype(tokenizer.vocab_size)
    prefixes = {key: output_prefix_for(config.output_prefix, key) for key in config.json_keys}
    total_bytes = sum(p.stat().st_size for p in files)
    logger.info(
        "tokenizing %d file(s), %.1f MB, with %d worker(s) into %s",
        len(files),
        total_bytes / 1e6,
        config.workers,
        ", ".join(f"{p}.bin/.idx" for p in prefixes.values()),
    )
    stats = PreprocessStats(
        outputs=prefixes,
        documents=dict.fromkeys(prefixes, 0),
        tokens=dict.fromkeys(prefixes, 0),
        dropped_empty=dict.fromkeys(prefixes, 0),
    )
    start = time.perf_counter()
    builders: dict[str, IndexedDatasetBuilder] = {}
    progress = _Progress(total_bytes, config)
    pool = None
    try:
        with _sigterm_as_interrupt():
            for key, prefix in prefixes.items():
                builders[key] = IndexedDatasetBuilder(prefix, dtype=dtype)
            if config.workers > 1:
                pool = concurrent.futures.ProcessPoolExecutor(
                    config.workers, mp_context=_pool_context(), initializer=_init_worker, initargs=(config, json_files)
                )
                encode = _encode_in_worker
            else:
                encode = _ChunkEncoder(config, json_files, tokenizer)
            chunks = _read_chunks(files, config.chunk_bytes)
            for result in _ordered_results(encode, chunks, config.workers, pool):
                _report_bad_lines(result.bad, files, stats, config)
                for key, builder in builders.items():
                    builder.add_documents(result.tokens[key], result.lengths[key])
                    stats.documents[key] += len(result.lengths[key])
                    stats.tokens[key] += len(result.tokens[key])
                    stats.dropped_empty[key] += result.dropped_empty[key]
                stats.input_bytes += result.input_bytes
                first = config.json_keys[0]
                progress.update(result.input_bytes, len(result.lengths[first]), len(result.tokens[first]))
            stats.seconds = time.perf_counter() - start
            for key, builder in builders.items():
                builder.finalize(_metadata(config, files, tokenizer, key, stats, dtype))
    except BaseException:
        for builder in builders.values():
            builder.abort()
        raise
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    _log_summary(stats)
    return stats


def _pool_context():
    # fork starts workers instantly and the parent holds no threads or Rayon pool at that point.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _report_bad_lines(
    bad: list[tuple[int, int, str]], files: list[Path], stats: PreprocessStats, config: PreprocessConfig
) -> None:
    for file_index, line_no, reason in bad:
        where = f"{files[file_index]}:{line_no}"
        if config.strict:
            raise DataFormatError(
                f"{where}: {reason} (--strict stops at the first bad line; drop --strict to skip them)"
            )
        stats.bad_lines += 1
        if stats.bad_lines <= config.max_reported_bad_lines:
            logger.warning("%s: %s; line skipped", where, reason)
        if stats.bad_lines == config.max_reported_bad_lines:
            logger.warning("further bad lines are counted but not shown")


def _metadata(
    config: PreprocessConfig,
    files: list[Path],
    tokenizer: BertChineseTokenizer,
    key: str,
    stats: PreprocessStats,
    dtype: np.dtype,
) -> dict:
    return {
        "format": METADATA_FORMAT,
        "tokenizer": "BertWordPieceLowerCase" if config.lower_case else "BertWordPieceCase",
        "vocab_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "vocab_file": os.path.basename(config.vocab_file),
        "dtype": np.dtype(dtype).name,
        "prepend_cls": config.prepend_cls,
        "append_eod": config.append_eod,
        "cls": tokenizer.cls,
        "eod": tokenizer.eod,
        "json_key": key,
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        "documents": stats.documents[key],
        "tokens": stats.tokens[key],
        "dropped_empty": stats.dropped_empty[key],
        "bad_lines": stats.bad_lines,
    }


def _log_summary(stats: PreprocessStats) -> None:
    seconds = max(stats.seconds, 1e-9)
    for key, prefix in stats.outputs.items():
        logger.info(
            "done: %s documents, %s tokens, %s empty dropped, %s bad lines, %.1f s (%.2f M tokens/s, %.1f MB/s) -> %s, %s",
            f"{stats.documents[key]:,}",
            f"{stats.tokens[key]:,}",
            f"{stats.dropped_empty[key]:,}",
            f"{stats.bad_lines:,}",
            stats.seconds,
            stats.tokens[key] / seconds / 1e6,
            stats.input_bytes / seconds / 1e6,
            data_file_path(prefix),
            index_file_path(prefix),
        )
