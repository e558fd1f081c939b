"""What a dataset holds and what training sees of it (tools/inspect_data.py's body).

For each corpus of a --data-path (one prefix or a blend): documents, tokens, the [UNK] share counted
on the tokens themselves (so it holds for any .bin/.idx, Megatron's included) and a histogram of
document lengths. And any sample exactly as the trainer's loader yields it: the datasets are built by
`build_train_valid_test_datasets` from the same DatasetConfig, so a sample index here is the sample
index there (the order depends on the number of samples the run builds once it needs more than one
epoch: pass the run's train_iters x global batch size).
"""

from __future__ import annotations

import os
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from megatron_zh.data.datasets.blended_dataset import parse_data_path
from megatron_zh.data.datasets.builder import (
    build_train_valid_test_datasets,
    dataset_normalization,
    open_indexed_dataset,
)
from megatron_zh.data.datasets.config import DatasetConfig, VocabIds
from megatron_zh.data.datasets.splits import SPLIT_NAMES
from megatron_zh.data.indexed.dataset import read_metadata
from megatron_zh.errors import ConfigError
from megatron_zh.fileio import write_figure

SCAN_TOKENS = 1 << 24  # tokens compared per step when counting [UNK]s (32 MB of uint16 at a time)
BAR_WIDTH = 40


@dataclass(frozen=True)
class CorpusSummary:
    prefix: str
    lengths: np.ndarray  # tokens per document, framing included
    framing: int  # tokens each document's framing adds ([CLS] and [SEP]: 2), per its metadata
    unk: int
    normalization: str | None  # None: the dataset has no metadata to say

    @property
    def documents(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum(dtype=np.int64))

    @property
    def body_tokens(self) -> int:
        return self.tokens - self.framing * self.documents

    @property
    def unk_share(self) -> float:
        return self.unk / self.body_tokens if self.body_tokens else 0.0


def summarize(prefix: str, unk_id: int) -> CorpusSummary:
    """Counts of one corpus; the [UNK]s counted over all of its tokens, a memory-mapped slice at a time."""
    indexed = open_indexed_dataset(prefix)
    meta = read_metadata(prefix) or {}
    framing = int(meta.get("prepend_cls", False)) + int(meta.get("append_eod", False))
    tokens = indexed.tokens_of(0, len(indexed))
    unk = sum(int(np.count_nonzero(tokens[i : i + SCAN_TOKENS] == unk_id)) for i in range(0, len(tokens), SCAN_TOKENS))
    return CorpusSummary(prefix, np.array(indexed.sequence_lengths), framing, unk, dataset_normalization(prefix))


def length_histogram(lengths: np.ndarray) -> list[tuple[int, int, int]]:
    """(low, high, documents) per power-of-two bin of document length [low, high]; empty bins at the ends left out."""
    if not len(lengths):
        return []
    top = int(np.ceil(np.log2(max(int(lengths.max()), 1) + 1)))
    edges = 2 ** np.arange(top + 1)  # 1, 2, 4, ...: [1, 1], [2, 3], [4, 7], ...
    counts = np.histogram(lengths, bins=np.append(edges, edges[-1] * 2))[0][: top + 1]
    used = np.flatnonzero(counts)
    return [(int(edges[i]), int(edges[i] * 2 - 1), int(counts[i])) for i in range(used[0], used[-1] + 1)]


def summary_lines(summary: CorpusSummary) -> list[str]:
    """The text report of one corpus: counts, [UNK] share, length statistics and histogram."""
    framing = f" ({summary.body_tokens:,} without [CLS]/[SEP])" if summary.framing else ""
    normalization = summary.normalization or "unknown (no .meta.json)"
    lengths = summary.lengths
    lines = [
        f"{summary.prefix}: {summary.documents:,} documents, {summary.tokens:,} tokens{framing}; "
        f"[UNK] {summary.unk:,} = {100 * summary.unk_share:.2f}%; text normalisation: {normalization}",
    ]
    if len(lengths):
        lines.append(
            f"document length (tokens): min {int(lengths.min()):,}, median {int(np.median(lengths)):,}, "
            f"mean {float(lengths.mean()):,.1f}, max {int(lengths.max()):,}"
        )
    histogram = length_histogram(lengths)
    most = max((count for _, _, count in histogram), default=1)
    for low, high, count in histogram:
        bar = "#" * max(1 if count else 0, round(BAR_WIDTH * count / most))
        lines.append(f"  {low:>7,} - {high:>7,} | {bar:<{BAR_WIDTH}} | {count:,}")
    return lines


def plot_lengths(summaries: list[CorpusSummary], output: str | os.PathLike) -> Path:
    """A PNG of the document-length histogram of each corpus (log-spaced bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    longest = max((int(s.lengths.max()) for s in summaries if len(s.lengths)), default=1)
    bins = np.unique(np.geomspace(1, longest + 1, 50).astype(np.int64)).tolist()
    for summary in summaries:
        ax.hist(summary.lengths, bins=bins, histtype="step", label=Path(summary.prefix).name)
    ax.set_xscale("log")
    ax.set_xlabel("document length (tokens, framing included)")
    ax.set_ylabel("documents")
    ax.grid(alpha=0.3)
    ax.legend()
    return write_figure(fig, output)


def training_sample(config: DatasetConfig, index: int, split: str, num_samples: int, vocab: VocabIds) -> dict:
    """Sample `index` of `split` as the trainer's datasets hold it ("tokens", "input_ids", "labels",
    "loss_mask"), the datasets built for `num_samples` samples of that split as a run builds them."""
    if split not in SPLIT_NAMES:
        raise ConfigError(f"the split to sample from must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    train, valid, test = (num_samples if name == split else 0 for name in SPLIT_NAMES)
    datasets = dict(zip(SPLIT_NAMES, build_train_valid_test_datasets(config, (train, valid, test), vocab)))
    dataset = datasets[split]
    if dataset is None:
        raise ConfigError(f"split {config.split!r} gives the {split} split no documents; choose another split")
    size = len(cast(Sized, dataset))  # map-style datasets (ours) have a length
    if not 0 <= index < size:
        raise ConfigError(f"sample {index} is out of range: the {split} split has {size:,} samples")
    return dataset[index]


def corpus_prefixes(config: DatasetConfig) -> list[str]:
    return parse_data_path(list(config.data_path))[0]
