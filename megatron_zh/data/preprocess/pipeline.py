"""Corpus -> Megatron .bin/.idx: parallel, streaming, deterministic, and safe to interrupt.

The main process lists the inputs as units (files and archive members, sources.py), reads them
in chunks of whole lines or Parquet rows (about `chunk_bytes` each, decompressing as it goes,
readers.py; formats.py says how each format is read) and hands them to `workers` processes; at
most two chunks per worker are in flight, so memory stays flat however large the corpus. Results
are written in input order, so the output is byte-identical whatever the worker count. Each
document becomes `[CLS] tokens [SEP]` (either end optional).

Bad lines (invalid UTF-8, invalid JSON, a missing or non-string key) are reported with file and
line number and skipped, or stop the run with `strict`. Outputs are written under temporary names
and renamed only at the end (.idx last), so a failed or interrupted run leaves no .idx behind. An
output dataset that exists is refused unless `overwrite`, and then replaced only once the new one
is complete; an output that is (however spelled) a file the run reads, vocab included, is refused.

The config is config.py, the per-chunk work the workers do encode.py, what the main process does
with each result (duplicates, counts, metadata) results.py; this module is the driver.
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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from pathlib import Path
from types import FrameType

from megatron_zh.data.corpus.formats import FORMATS, Chunk
from megatron_zh.data.indexed.builder import IndexedDatasetBuilder
from megatron_zh.data.indexed.dataset import best_token_dtype, data_file_path, index_file_path, metadata_file_path
from megatron_zh.data.preprocess.config import PreprocessConfig, PreprocessStats, output_prefix_for
from megatron_zh.data.preprocess.encode import ChunkEncoder, ChunkResult, encode_in_worker, init_worker
from megatron_zh.data.preprocess.readers import read_units
from megatron_zh.data.preprocess.results import ResultWriter, log_summary, metadata, new_stats
from megatron_zh.data.preprocess.sources import log_skipped, units_for
from megatron_zh.data.preprocess.workers import plan_workers
from megatron_zh.errors import ConfigError
from megatron_zh.fileio import refuse_existing_output
from megatron_zh.log import get_logger
from megatron_zh.paths import refuse_directory_prefix, refuse_overlap
from megatron_zh.progress import Progress, format_duration
from megatron_zh.text.tokenizer import BertChineseTokenizer

logger = get_logger(__name__)


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
    refuse_directory_prefix(config.output_prefix, "PREFIX_{key}_document.bin/.idx/.meta.json")
    inputs = units_for(config)
    units = inputs.units
    log_skipped(inputs.skipped, config.max_reported_bad_lines)
    plain = next((unit for unit in units if not FORMATS[unit.fmt].named_fields), None)
    if plain is not None and len(config.json_keys) != 1:
        raise ConfigError(
            f"--json-keys {list(config.json_keys)}: {plain.label} is {FORMATS[plain.fmt].label} "
            f"(one document per {FORMATS[plain.fmt].record}), so give one key"
        )
    prefixes = {key: output_prefix_for(config.run_prefix, key) for key in config.json_keys}
    input_files = list(dict.fromkeys(unit.path for unit in units))  # archives once, however many members
    _check_outputs(config, prefixes.values(), input_files)
    tokenizer = BertChineseTokenizer(config.vocab_file, lower_case=config.lower_case, normalization=config.normalize)
    dtype = best_token_dtype(tokenizer.vocab_size)
    total_bytes = sum(unit.disk_bytes for unit in units)
    shard = f" (shard {config.shard_index} of {config.num_shards})" if config.num_shards > 1 else ""
    workers = plan_workers(config.workers, input_files, config.chunk_bytes)
    logger.info(
        "tokenizing %d input(s)%s, %.1f MB on disk, with %d worker(s) into %s",
        len(units),
        shard,
        total_bytes / 1e6,
        workers,
        ", ".join(f"{p}.bin/.idx" for p in prefixes.values()),
    )
    stats = new_stats(prefixes)
    stats.skipped_inputs = len(inputs.skipped)
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
                    workers, mp_context=_pool_context(), initializer=init_worker, initargs=(config, os.getpid())
                )
                encode = encode_in_worker
            else:
                encode = ChunkEncoder(config, tokenizer)
            writer = ResultWriter(config, units, builders, stats)
            for result in _ordered_results(encode, read_units(units, config), workers, pool):
                writer.add(result)
                next_line = _show_progress(progress, result.disk_bytes, stats, config, next_line)
            writer.check_documents()
            stats.seconds = time.perf_counter() - start
            for key, builder in builders.items():
                builder.finalize(metadata(config, inputs, writer.accounts, tokenizer, key, stats, dtype))
    except BaseException:
        for builder in builders.values():
            builder.abort()
        raise
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    log_summary(stats, writer.accounts, tokenizer)
    return stats


def _check_outputs(config: PreprocessConfig, prefixes: Iterable[str], input_files: list[Path]) -> None:
    """No output may be a file the run reads (vocab included), nor replace a dataset unless `overwrite`."""
    read = [("--input", path) for path in input_files] + [("--vocab-file", config.vocab_file)]
    for prefix in prefixes:
        outputs = (data_file_path(prefix), index_file_path(prefix), metadata_file_path(prefix))
        for output in outputs:
            refuse_overlap(output, read, flag="--output-prefix")
        for output in outputs:
            refuse_existing_output(output, config.overwrite)


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
