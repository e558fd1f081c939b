"""Corpus -> Megatron .bin/.idx: parallel, streaming, deterministic, and safe to interrupt.

The main process reads the inputs in chunks of whole lines (about `chunk_bytes` each) and hands
them to `workers` processes; at most two chunks per worker are in flight, so memory stays flat
however large the corpus. Results are written in input order, so the output is byte-identical
whatever the worker count. Each document becomes `[CLS] tokens [SEP]` (either end optional).

Bad lines (invalid UTF-8, invalid JSON, a missing or non-string key) are reported with file and
line number and skipped, or stop the run with `strict`. Outputs are written under temporary names
and renamed only at the end (.idx last), so a failed or interrupted run leaves no .idx behind.

The config and input discovery are `preprocess_config`, the per-chunk work the workers do
`preprocess_encode`; this module is the driver.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from megatron_zh.data.indexed_builder import IndexedDatasetBuilder
from megatron_zh.data.indexed_dataset import best_token_dtype, data_file_path, index_file_path, metadata_file_path
from megatron_zh.data.preprocess_config import (
    PreprocessConfig,
    PreprocessStats,
    expand_inputs,
    is_json_lines,
    output_prefix_for,
)
from megatron_zh.data.preprocess_encode import (
    Chunk,
    ChunkEncoder,
    ChunkResult,
    encode_in_worker,
    init_worker,
    read_chunks,
)
from megatron_zh.data.workers import plan_workers
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.log import get_logger
from megatron_zh.paths import refuse_overlap
from megatron_zh.progress import Progress, format_duration
from megatron_zh.tokenizer import BertChineseTokenizer

logger = get_logger(__name__)

METADATA_FORMAT = "megatron_zh.preprocess/1"


Encode = Callable[[Chunk], ChunkResult]


def _ordered_results(
    encode: Encode, chunks: Iterator[Chunk], workers: int, pool: concurrent.futures.Executor | None
) -> Iterator[ChunkResult]:
    """Results in input order, with at most 2 chunks per worker submitted and not yet consumed."""
    if pool is None:
        yield from map(encode, chunks)
        return
    in_flight: collections.deque[Future[ChunkResult]] = collections.deque()
    for chunk in chunks:
        in_flight.append(pool.submit(encode, chunk))
        if len(in_flight) >= 2 * workers:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill` (SIGTERM) unwinds like Ctrl-C, so temporary outputs are removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def preprocess(config: PreprocessConfig) -> PreprocessStats:
    """Tokenize `config.inputs` into one Megatron dataset per JSON key; returns counts and timing."""
    files = expand_inputs(config.inputs)
    json_files = [is_json_lines(path, config.input_format) for path in files]
    if not all(json_files) and len(config.json_keys) != 1:
        plain = next(path for path, is_json in zip(files, json_files) if not is_json)
        raise ConfigError(
            f"--json-keys {list(config.json_keys)}: {plain} is plain text (one document per line), so give one key"
        )
    tokenizer = BertChineseTokenizer(config.vocab_file, lower_case=config.lower_case)
    dtype = best_token_dtype(tokenizer.vocab_size)
    prefixes = {key: output_prefix_for(config.output_prefix, key) for key in config.json_keys}
    for prefix in prefixes.values():
        for output in (data_file_path(prefix), index_file_path(prefix), metadata_file_path(prefix)):
            refuse_overlap(output, [("--input", path) for path in files], flag="--output-prefix")
    total_bytes = sum(p.stat().st_size for p in files)
    workers = plan_workers(config.workers, files, config.chunk_bytes)
    logger.info(
        "tokenizing %d file(s), %.1f MB, with %d worker(s) into %s",
        len(files),
        total_bytes / 1e6,
        workers,
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
    progress = Progress(
        total_bytes,
        desc="preprocess",
        unit="B",
        enabled=config.progress,
        unit_scale=True,
        unit_divisor=1024,
        smoothing=0.1,
    )
    next_line = config.log_interval  # documents at which the next progress line is due
    pool = None
    encode: Encode
    try:
        with _sigterm_as_interrupt():
            for key, prefix in prefixes.items():
                builders[key] = IndexedDatasetBuilder(prefix, dtype=dtype)
            if workers > 1:
                pool = concurrent.futures.ProcessPoolExecutor(
                    workers,
                    mp_context=_pool_context(),
                    initializer=init_worker,
                    initargs=(config, json_files, os.getpid()),
                )
                encode = encode_in_worker
            else:
                encode = ChunkEncoder(config, json_files, tokenizer)
            chunks = read_chunks(files, config.chunk_bytes)
            for result in _ordered_results(encode, chunks, workers, pool):
                _report_bad_lines(result.bad, files, stats, config)
                for key, builder in builders.items():
                    builder.add_documents(result.tokens[key], result.lengths[key])
                    stats.documents[key] += len(result.lengths[key])
                    stats.tokens[key] += len(result.tokens[key])
                    stats.dropped_empty[key] += result.dropped_empty[key]
                stats.input_bytes += result.input_bytes
                next_line = _show_progress(progress, result.input_bytes, stats, config, next_line)
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


def _show_progress(
    progress: Progress, nbytes: int, stats: PreprocessStats, config: PreprocessConfig, next_line: int
) -> int:
    """Advance the bar by `nbytes`, or log a line every `log_interval` documents; returns the next line's count.

    Documents and tokens are those of the first JSON key.
    """
    key = config.json_keys[0]
    documents, tokens = stats.documents[key], stats.tokens[key]
    elapsed = progress.elapsed_s
    postfix = f"{documents / elapsed:,.0f} docs/s, {tokens / elapsed / 1e6:.2f} M tokens/s" if progress.bar else None
    progress.update(nbytes, postfix)
    if not progress.writes_lines or documents < next_line:
        return next_line
    logger.info(
        "%s documents (%.0f/s), %s tokens (%.2f M/s), %.1f/%.1f MB (%.1f MB/s), ETA %s",
        f"{documents:,}",
        documents / elapsed,
        f"{tokens:,}",
        tokens / elapsed / 1e6,
        progress.done / 1e6,
        progress.total / 1e6,
        progress.rate / 1e6,
        format_duration(progress.eta_s),
    )
    return (documents // config.log_interval + 1) * config.log_interval


def _pool_context() -> BaseContext:
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
) -> dict[str, Any]:
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
            "done: %s documents, %s tokens, %s empty dropped, %s bad lines, %.1f s "
            "(%.2f M tokens/s, %.1f MB/s) -> %s, %s",
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
