"""The one entry point that builds a run's train/valid/test datasets, from one corpus or a blend.

Each corpus is opened with errors that say what is missing (and checked against the vocab's
fingerprint), cut into its three splits, and sampled as the config's sample mode says: packed
windows (gpt_dataset.py) or each document on its own (document_dataset.py). Several corpora are
blended (blended_dataset.py). Global rank 0 builds and caches the indices; the others load them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from megatron_zh.data.datasets.blended_dataset import (
    SAMPLE_COUNTS,
    BlendedDataset,
    SplitDataset,
    normalize,
    parse_data_path,
    samples_per_dataset,
)
from megatron_zh.data.datasets.config import DatasetConfig, VocabIds
from megatron_zh.data.datasets.document_dataset import DocumentDataset
from megatron_zh.data.datasets.gpt_dataset import GPTDataset
from megatron_zh.data.datasets.index_cache import default_index_cache_dir, rank0_first
from megatron_zh.data.datasets.splits import SPLIT_NAMES, document_range, split_ranges
from megatron_zh.data.indexed.dataset import (
    IndexedDataset,
    data_file_path,
    index_file_path,
    metadata_file_path,
    read_metadata,
)
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.log import get_logger
from megatron_zh.text.normalization import NONE
from megatron_zh.text.tokenizer import check_fingerprint

logger = get_logger(__name__)

# Megatron's mid_level_dataset_surplus: each corpus builds this much more than its share.
MID_LEVEL_SURPLUS = 0.005

Splits = tuple[torch.utils.data.Dataset | None, torch.utils.data.Dataset | None, torch.utils.data.Dataset | None]


def open_indexed_dataset(
    prefix: str, vocab_fingerprint: str | None = None, normalization: str | None = None
) -> IndexedDataset:
    """Open PREFIX.bin/.idx with errors that say what is missing and how to make it; checked against the
    vocab fingerprint and the text normalisation when they are given."""
    prefix = re.sub(r"\.(bin|idx)$", "", str(prefix))
    for path in (index_file_path(prefix), data_file_path(prefix)):
        if not os.path.isfile(path):
            hint = ""
            if os.path.isfile(index_file_path(prefix + "_text_document")):
                hint = f" (did you mean {prefix}_text_document? preprocessing appends _text_document)"
            raise DataFormatError(
                f"{path} not found: dataset prefix {prefix!r} needs {prefix}.bin and {prefix}.idx{hint}. "
                "Make them with: python tools/preprocess_data.py --input CORPUS.txt "
                "--output-prefix PREFIX --vocab-file VOCAB.txt"
            )
    if vocab_fingerprint is not None:
        check_vocab_fingerprint(prefix, vocab_fingerprint)
    if normalization is not None:
        check_normalization(prefix, normalization)
    return IndexedDataset(prefix)


def dataset_normalization(prefix: str) -> str | None:
    """The text normalisation PREFIX was tokenized with: its metadata's ("none" when the field predates
    normalisation), None when it has no metadata (made by another tool: unknown)."""
    meta = read_metadata(prefix)
    return None if meta is None else str(meta.get("normalization", NONE))


def check_normalization(prefix: str, expected: str) -> None:
    found = dataset_normalization(prefix)
    if found is not None and found != expected:
        raise DataFormatError(
            f"{prefix}.bin/.idx was tokenized with text normalisation {found!r} (per {metadata_file_path(prefix)}), "
            f"but {expected!r} is expected here: its ids differ where the other's text had characters the vocab "
            "lacks; preprocess it again with the same --normalize as the rest"
        )


def common_normalization(prefixes: Sequence[str]) -> str:
    """The one text normalisation all `prefixes` were tokenized with ("none" if none says); ConfigError if
    they differ, since datasets tokenized differently must not be blended."""
    found = {prefix: dataset_normalization(prefix) for prefix in prefixes}
    stated = {prefix: value for prefix, value in found.items() if value is not None}
    if len(set(stated.values())) > 1:
        listed = "; ".join(f"{prefix}: {value}" for prefix, value in stated.items())
        raise ConfigError(
            f"the run's datasets were tokenized with different text normalisations ({listed}); preprocess them "
            "again with one --normalize so that the same text gets the same ids in all of them"
        )
    return next(iter(stated.values()), NONE)


def check_vocab_fingerprint(prefix: str, expected: str) -> None:
    meta = read_metadata(prefix)
    found = None if meta is None else meta.get("vocab_fingerprint")
    if found is None:
        logger.warning(
            "%s: no vocab fingerprint (%s is missing or lacks one); cannot check it was tokenized with vocab %s",
            prefix,
            metadata_file_path(prefix),
            expected,
        )
        return
    check_fingerprint(
        found,
        expected,
        source=f"{prefix}.bin/.idx (per {metadata_file_path(prefix)})",
        fix="re-run tools/preprocess_data.py with the training vocab, or train with the vocab the data was made with",
    )


def _token_id(given: int | None, prefix: str, key: str, needed_for: str) -> int:
    """A special token's id: as VocabIds.<key> gives it, else from the dataset's .meta.json."""
    if given is not None:
        return given
    meta = read_metadata(prefix) or {}
    if key not in meta:
        raise ConfigError(
            f"{needed_for}: {metadata_file_path(prefix)} has no '{key}' entry; make the dataset again with "
            "tools/preprocess_data.py"
        )
    return int(meta[key])


def build_split_datasets(
    prefix: str, config: DatasetConfig, num_samples: tuple[int | None, int | None, int | None], vocab: VocabIds
) -> list[SplitDataset | None]:
    """One dataset per split of one corpus; None where the split's weight or sample count is 0."""
    indexed = open_indexed_dataset(prefix, vocab.fingerprint, vocab.normalization)
    datasets: list[SplitDataset | None] = []
    for name, fractions, wanted in zip(SPLIT_NAMES, split_ranges(config.split), num_samples):
        if fractions is None or wanted == 0:
            if fractions is None and wanted:
                logger.warning("%d %s samples wanted but split %r gives no documents to it", wanted, name, config.split)
            datasets.append(None)
            continue
        datasets.append(_samples(indexed, name, document_range(fractions, len(indexed)), wanted, config, vocab))
    return datasets


def _samples(
    indexed: IndexedDataset,
    split: str,
    documents: tuple[int, int],
    wanted: int | None,
    config: DatasetConfig,
    vocab: VocabIds,
) -> SplitDataset:
    """One split's samples of one corpus, cut as the config's sample mode says."""
    eod_token = None
    if config.eod_mask_loss:
        eod_token = _token_id(vocab.eod, indexed.path_prefix, "eod", "eod_mask_loss needs the end-of-document id")
    cache_dir = Path(config.data_cache_path) if config.data_cache_path else default_index_cache_dir(indexed.path_prefix)
    if config.sample_mode == "document":
        pad_token = _token_id(vocab.pad, indexed.path_prefix, "pad", "sample_mode 'document' pads with [PAD]")
        return DocumentDataset(indexed, split, documents, wanted, config, cache_dir, pad_token, eod_token)
    return GPTDataset(indexed, split, documents, wanted, config, cache_dir, eod_token)


def build_validation_sources(config: DatasetConfig, num_samples: int, vocab: VocabIds) -> dict[str, SplitDataset]:
    """Each --valid-data-path source by name: all of its documents, `num_samples` validation samples."""

    def source(prefix: str) -> SplitDataset:
        indexed = open_indexed_dataset(prefix, vocab.fingerprint, vocab.normalization)
        return _samples(indexed, "valid", (0, len(indexed)), num_samples, config, vocab)

    return rank0_first(lambda: {name: source(prefix) for name, prefix in config.validation_sources})


def _token_count(prefix: str) -> float:
    corpus = open_indexed_dataset(prefix)  # held while its memory-mapped lengths are summed
    return float(np.sum(corpus.sequence_lengths, dtype=np.int64))


def _build_blend(
    prefixes: list[str],
    weights: list[float] | None,
    config: DatasetConfig,
    num_samples: tuple[int, int, int],
    vocab: VocabIds,
) -> list[BlendedDataset | None]:
    if weights is None:
        weights = [_token_count(prefix) for prefix in prefixes]
        logger.info("blending %s in proportion to their token counts %s", prefixes, weights)
    weights = normalize(weights)
    # Per corpus and split: the share the blend will draw (target) and the count to build (buffer).
    targets = [samples_per_dataset(weights, wanted) for wanted in num_samples]
    buffers = [samples_per_dataset(weights, wanted, MID_LEVEL_SURPLUS) for wanted in num_samples]
    per_corpus = [
        build_split_datasets(prefix, config, (buffers[0][d], buffers[1][d], buffers[2][d]), vocab)
        for d, prefix in enumerate(prefixes)
    ]
    blends: list[BlendedDataset | None] = []
    for s, split in enumerate(SPLIT_NAMES):
        maybe_parts = [per_corpus[d][s] for d in range(len(prefixes))]
        parts = [part for part in maybe_parts if part is not None]
        if len(parts) < len(maybe_parts):
            blends.append(None)
            continue
        cache_dir = (
            Path(config.data_cache_path)
            if config.data_cache_path
            else default_index_cache_dir(parts[0].indexed.path_prefix)
        )
        blends.append(BlendedDataset(parts, weights, sum(targets[s]), split, cache_dir))
    return blends


def build_train_valid_test_datasets(
    config: DatasetConfig, num_samples: tuple[int, int, int], vocab: VocabIds | None = None
) -> Splits:
    """Train, valid and test datasets of at least num_samples[i] samples each (None where 0 are wanted
    or the split has weight 0), from one corpus or a blend.

    Global rank 0 builds and caches the indices while the other ranks wait; they then load them.
    """
    SAMPLE_COUNTS("num_samples", num_samples)
    counts = (int(num_samples[0]), int(num_samples[1]), int(num_samples[2]))
    prefixes, weights = parse_data_path(list(config.data_path))
    ids = vocab or VocabIds()

    def build() -> Sequence[torch.utils.data.Dataset | None]:
        if len(prefixes) == 1:
            return build_split_datasets(prefixes[0], config, counts, ids)
        return _build_blend(prefixes, weights, config, counts, ids)

    train, valid, test = rank0_first(build)
    return train, valid, test
