"""The main process's side of each worker result: bad lines, duplicates, the datasets, the counts, the report.

Results arrive in input order (`preprocess._ordered_results`), so everything here sees documents in
the order they are written: the first copy of a duplicate is the one kept, whatever the worker count.
Each unit's lines are tallied as they come (UTF-8 or not, charsets.py), and once a unit's results are
all in, a unit whose text is mostly not UTF-8 stops the run: its bad lines are not damage to skip
but a file in another encoding (the first bytes' sniff in readers.py catches most such files sooner).

Torch-free, like the rest of the preprocessing driver.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np

from megatron_zh.data.corpus.charsets import DecodeTally
from megatron_zh.data.corpus.formats import FORMATS
from megatron_zh.data.indexed.builder import IndexedDatasetBuilder
from megatron_zh.data.indexed.dataset import data_file_path, index_file_path, metadata_file_path
from megatron_zh.data.preprocess.config import PreprocessConfig, PreprocessStats
from megatron_zh.data.preprocess.dedup import SeenHashes
from megatron_zh.data.preprocess.encode import ChunkResult
from megatron_zh.data.preprocess.readers import check_decoded
from megatron_zh.data.preprocess.report import UnkAccounts
from megatron_zh.data.preprocess.sources import Inputs, Unit
from megatron_zh.errors import DataFormatError
from megatron_zh.log import get_logger
from megatron_zh.text.tokenizer import BertChineseTokenizer

logger = get_logger("megatron_zh.data.preprocess")  # the run's lines, all under the driver's name

METADATA_FORMAT = "megatron_zh.preprocess/1"


def new_stats(prefixes: dict[str, str]) -> PreprocessStats:
    return PreprocessStats(
        outputs=prefixes,
        documents=dict.fromkeys(prefixes, 0),
        tokens=dict.fromkeys(prefixes, 0),
        dropped_empty=dict.fromkeys(prefixes, 0),
        dropped_short=dict.fromkeys(prefixes, 0),
        dropped_duplicate=dict.fromkeys(prefixes, 0),
    )


class ResultWriter:
    """Takes the workers' results in order and writes their documents to one builder per key."""

    def __init__(
        self,
        config: PreprocessConfig,
        units: list[Unit],
        builders: dict[str, IndexedDatasetBuilder],
        stats: PreprocessStats,
    ) -> None:
        self.config, self.units, self.builders, self.stats = config, units, builders, stats
        self.seen = {key: SeenHashes() for key in builders} if config.dedup else {}
        self.unit_documents: collections.Counter[int] = collections.Counter()  # first key's documents per unit
        self.decoded = DecodeTally()  # of the unit whose results are coming in
        self.unit = 0
        self.accounts = UnkAccounts(units, tuple(builders))
        stats.unk = self.accounts.total
        self._framing = int(config.prepend_cls) + int(config.append_eod)

    def add(self, result: ChunkResult) -> None:
        if result.unit != self.unit:  # the previous unit's results are all in
            self._check_decoded()
            self.decoded, self.unit = DecodeTally(), result.unit
        self.decoded.add(result.decoded)
        self._report_bad_lines(result.bad)
        stats = self.stats
        for key, builder in self.builders.items():
            tokens, lengths, unk = result.tokens[key], result.lengths[key], result.unk[key]
            if key in self.seen:
                first = self.seen[key].add(result.hashes[key])
                stats.dropped_duplicate[key] += int((~first).sum())
                tokens, lengths, unk = tokens[np.repeat(first, lengths)], lengths[first], unk.select(first)
            builder.add_documents(tokens, lengths)
            self.accounts.add(key, result.unit, unk, lengths, self._framing)
            stats.documents[key] += len(lengths)
            stats.tokens[key] += len(tokens)
            stats.dropped_empty[key] += result.dropped_empty[key]
            stats.dropped_short[key] += result.dropped_short[key]
        self.unit_documents[result.unit] += len(result.lengths[self.config.json_keys[0]])
        stats.input_bytes += result.input_bytes

    def _check_decoded(self) -> None:
        """Refuse the unit just read if its text is mostly not UTF-8 (another encoding, not a few bad lines)."""
        check_decoded(self.units[self.unit], self.decoded)

    def check_documents(self) -> None:
        """A unit that gave no documents is worth a warning; a run that gave none is an error, not a dataset.

        Called once every result is in: the last unit's encoding is checked first."""
        self._check_decoded()
        empty_units = [unit.label for i, unit in enumerate(self.units) if not self.unit_documents[i]]
        for label in empty_units[: self.config.max_reported_bad_lines]:
            logger.warning("%s: no documents", label)
        stats = self.stats
        for key, documents in stats.documents.items():
            if documents == 0:
                raise DataFormatError(
                    f"no documents for key {key!r} in {len(self.units)} input(s) ({_first_labels(self.units)}): "
                    f"{stats.bad_lines:,} bad lines, {stats.dropped_empty[key]:,} empty, "
                    f"{stats.dropped_short[key]:,} under --min-doc-chars; check --input-format, --json-keys and "
                    "--document-boundary"
                )

    def _report_bad_lines(self, bad: list[tuple[int, int, str]]) -> None:
        config, stats = self.config, self.stats
        for unit_index, line_no, reason in bad:
            unit = self.units[unit_index]
            record = FORMATS[unit.fmt].record
            where = f"{unit.label}:{'' if record == 'line' else record + ' '}{line_no}"
            if config.strict:
                raise DataFormatError(
                    f"{where}: {reason} (--strict stops at the first bad line; drop --strict to skip them)"
                )
            stats.bad_lines += 1
            if stats.bad_lines <= config.max_reported_bad_lines:
                logger.warning("%s: %s; %s skipped", where, reason, record)
            if stats.bad_lines == config.max_reported_bad_lines:
                logger.warning("further bad lines are counted but not shown")


def _first_labels(units: list[Unit], count: int = 3) -> str:
    shown = ", ".join(unit.label for unit in units[:count])
    return shown + (f", ... ({len(units) - count} more)" if len(units) > count else "")


def metadata(
    config: PreprocessConfig,
    inputs: Inputs,
    accounts: UnkAccounts,
    tokenizer: BertChineseTokenizer,
    key: str,
    stats: PreprocessStats,
    dtype: np.dtype,
) -> dict[str, Any]:
    """PREFIX.meta.json: how the tokens were made, from what (every input, with its counts), what the
    model will not see ([UNK]), and what was dropped and why."""
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
        "document_boundary": config.document_boundary,
        "min_doc_chars": config.min_doc_chars,
        "dedup": "per shard" if config.dedup and config.num_shards > 1 else config.dedup,
        "shard": {"index": config.shard_index, "count": config.num_shards},
        **accounts.metadata(key, tokenizer),  # normalization, unk, inputs (with their counts), by_input
        "skipped_inputs": stats.skipped_inputs,
        "skipped": [entry.describe() for entry in inputs.skipped],
        "documents": stats.documents[key],
        "tokens": stats.tokens[key],
        "dropped_empty": stats.dropped_empty[key],
        "dropped_short": stats.dropped_short[key],
        "dropped_duplicate": stats.dropped_duplicate[key],
        "bad_lines": stats.bad_lines,
    }


def log_summary(stats: PreprocessStats, accounts: UnkAccounts, tokenizer: BertChineseTokenizer) -> None:
    seconds = max(stats.seconds, 1e-9)
    for key, prefix in stats.outputs.items():
        logger.info(
            "done: %s documents, %s tokens, %s, %s empty dropped, %s bad lines, %s short dropped, "
            "%s duplicates dropped, %s inputs skipped, %.1f s (%.2f M tokens/s, %.1f MB/s) -> %s, %s",
            f"{stats.documents[key]:,}",
            f"{stats.tokens[key]:,}",
            stats.unk[key].headline(),
            f"{stats.dropped_empty[key]:,}",
            f"{stats.bad_lines:,}",
            f"{stats.dropped_short[key]:,}",
            f"{stats.dropped_duplicate[key]:,}",
            f"{stats.skipped_inputs:,}",
            stats.seconds,
            stats.tokens[key] / seconds / 1e6,
            stats.input_bytes / seconds / 1e6,
            data_file_path(prefix),
            index_file_path(prefix),
        )
        for line in accounts.summary_lines(key, tokenizer, metadata_file_path(prefix)):
            logger.info("%s", line)
