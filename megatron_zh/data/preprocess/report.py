"""What a preprocessing run tells about its data: the [UNK] share and what is behind it, by input.

Every worker result carries the tally of its documents' [UNK]s (text/unknown_tokens.py); `UnkAccounts`
adds them up per dataset, per unit (a file or an archive member) and per input (a file or an
archive, however many members it has). The .meta.json keeps the full per-member list; the log and
the model card summarise by input, so four CLUECorpusSmall zips of 28 members are four lines.

When the run does not normalise, the report also says how much of the [UNK] share each rule set
of `--normalize` would remove: every distinct span is encoded again with and without the rule set
(a few hundred short strings, at the end of the run).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megatron_zh.data.preprocess.sources import Unit
from megatron_zh.text.normalization import RULES
from megatron_zh.text.tokenizer import BertChineseTokenizer
from megatron_zh.text.unknown_tokens import CUT, LITERAL, UnkReport, UnkTally

TOP_TOTAL = 50  # spans listed for the whole dataset
TOP_PER_INPUT = 10  # and per input: a folder of thousands of files would otherwise write megabytes
MAX_INPUT_LINES = 20  # inputs listed one per line in the log; .meta.json has them all


@dataclass
class UnitCounts:
    documents: int = 0
    tokens: int = 0  # framing included, as written to the .bin
    unk: int = 0


class UnkAccounts:
    """The run's counts per dataset (JSON key), per unit and per input path."""

    def __init__(self, units: list[Unit], keys: tuple[str, ...]) -> None:
        self.units = units
        self.total = {key: UnkReport() for key in keys}
        self.per_unit = {key: [UnitCounts() for _ in units] for key in keys}
        self.per_input: dict[str, dict[Path, UnkReport]] = {key: collections.defaultdict(UnkReport) for key in keys}
        self._estimates: dict[str, dict[str, float]] = {}

    def add(self, key: str, unit: int, tally: UnkTally, lengths: np.ndarray, framing: int) -> None:
        """One result's documents of `key` as written: `lengths` framed, `tally` of those documents only."""
        body = int(lengths.sum()) - framing * len(lengths)
        self.total[key].add(tally, body)
        self.per_input[key][self.units[unit].path].add(tally, body)
        counts = self.per_unit[key][unit]
        counts.documents += len(lengths)
        counts.tokens += int(lengths.sum())
        counts.unk += tally.total

    def estimates(self, key: str, tokenizer: BertChineseTokenizer) -> dict[str, float]:
        """{rule set: share of the [UNK] tokens it would remove} for each rule set the run did not apply."""
        if key not in self._estimates:
            self._estimates[key] = {
                rule: _share_removed(self.total[key], tokenizer, rule)
                for rule in RULES
                if rule not in tokenizer.normalization.rules
            }
        return self._estimates[key]

    def inputs_metadata(self, key: str) -> list[dict[str, Any]]:
        """PREFIX.meta.json's "inputs": every unit (archive members one by one) with its counts."""
        return [
            {**unit.describe(), "documents": c.documents, "tokens": c.tokens, "unk": c.unk}
            for unit, c in zip(self.units, self.per_unit[key])
        ]

    def by_input(self, key: str) -> list[dict[str, Any]]:
        """One entry per input file or archive, in reading order: members, bytes, documents, tokens, [UNK]s."""
        summary: dict[Path, dict[str, Any]] = {}
        for unit, counts in zip(self.units, self.per_unit[key]):
            entry = summary.setdefault(
                unit.path,
                {"path": str(unit.path), "members": 0, "bytes": 0, "documents": 0, "tokens": 0},
            )
            entry["members"] += unit.member is not None
            entry["bytes"] += unit.size
            entry["documents"] += counts.documents
            entry["tokens"] += counts.tokens
        for path, entry in summary.items():
            report = self.per_input[key][path]
            entry.update(unk=report.unk, unk_share=round(report.share, 6), top=report.top(TOP_PER_INPUT))
        return list(summary.values())

    def metadata(self, key: str, tokenizer: BertChineseTokenizer) -> dict[str, Any]:
        """The fields PREFIX.meta.json gets from the report."""
        unk = self.total[key].metadata(TOP_TOTAL)
        unk["normalize_would_remove"] = {rule: round(v, 6) for rule, v in self.estimates(key, tokenizer).items()}
        return {
            "normalization": tokenizer.normalization.identity,
            "unk": unk,
            "inputs": self.inputs_metadata(key),
            "by_input": self.by_input(key),
        }

    def summary_lines(self, key: str, tokenizer: BertChineseTokenizer, metadata_file: str) -> list[str]:
        """The log's lines after a dataset's "done" line: what --normalize would remove, then inputs."""
        lines = []
        helps = {rule: share for rule, share in self.estimates(key, tokenizer).items() if share > 0}
        if helps:
            removed = ", ".join(f"--normalize {rule} {100 * share:.1f}%" for rule, share in helps.items())
            lines.append(f"of these [UNK] tokens, would become known tokens with: {removed}")
        inputs = self.by_input(key)
        if len(inputs) > 1:
            lines += [_input_line(entry) for entry in inputs[:MAX_INPUT_LINES]]
            if len(inputs) > MAX_INPUT_LINES:
                lines.append(f"... and {len(inputs) - MAX_INPUT_LINES} more inputs ({metadata_file} lists them all)")
        return lines


def _input_line(entry: dict[str, Any]) -> str:
    members = entry["members"]
    what = f"{members} member{'s' * (members != 1)}" if members else "1 file"
    return (
        f"  {Path(entry['path']).name}: {what}, {entry['bytes'] / 1e6:.1f} MB, {entry['documents']:,} documents, "
        f"{entry['tokens']:,} tokens, [UNK] {100 * entry['unk_share']:.2f}%"
    )


def _share_removed(report: UnkReport, tokenizer: BertChineseTokenizer, rule: str) -> float:
    """The share of `report`'s [UNK] tokens that the rule set would turn into known tokens.

    Each span is encoded alone, before and after the rule set: exact for single characters (punctuation
    and ideographs are words of their own, whatever surrounds them), and for whole words as good as
    their span (cut spans and the literal "[UNK]" count as not removed)."""
    if not report.unk:
        return 0.0
    normalization = tokenizer.equivalents().select(rule)
    spans = [s for s in report.spans if s != LITERAL and not (len(s) > 1 and s.endswith(CUT))]
    if not spans:
        return 0.0
    encode = tokenizer.backend.encode_batch_fast
    before = encode(spans, add_special_tokens=False)
    after = encode(normalization.apply(spans), add_special_tokens=False)
    removed = 0.0
    for span, old, new in zip(spans, before, after):
        unk_before = old.ids.count(tokenizer.unk)
        if unk_before:
            removed += report.spans[span] * max(0, unk_before - new.ids.count(tokenizer.unk)) / unk_before
    return removed / report.unk
