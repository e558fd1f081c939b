"""Weighted blends of several corpora: samples drawn from each in a fixed ratio, as Megatron's BlendedDataset.

`data_path = ["0.7", "a_text_document", "0.3", "b_text_document"]` draws 70% of every split's
samples from `a` and 30% from `b`, interleaved so that every prefix of the blend keeps the ratio
as closely as possible (Megatron's BlendedDataset). Each corpus is asked for its share plus a
0.5% margin, so rounding in the interleaving never runs a corpus dry. A list of prefixes without
weights blends them in proportion to their token counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from megatron_zh.data.datasets import helpers
from megatron_zh.data.datasets.document_dataset import DocumentDataset
from megatron_zh.data.datasets.gpt_dataset import GPTDataset
from megatron_zh.data.datasets.index_cache import (
    INDEX_FORMAT_VERSION,
    IndexCache,
    MappedIndices,
    load_or_build,
)
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.log import get_logger
from megatron_zh.validators import POSITIVE_INT, POSITIVE_NUMBER, Check

logger = get_logger(__name__)

SplitDataset = GPTDataset | DocumentDataset  # what one corpus's split is, by config.sample_mode


def _are_sample_counts(value: Sequence[object]) -> bool:
    return len(value) == 3 and all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0 for n in value
    )


SAMPLE_COUNTS = Check(_are_sample_counts, "three non-negative integers (train, valid, test)")


def parse_data_path(data_path: list[str]) -> tuple[list[str], list[float] | None]:
    """["0.7", "a", "0.3", "b"] -> (["a", "b"], [0.7, 0.3]); ["a", "b"] -> (["a", "b"], None)."""
    items = [str(item).strip() for item in data_path]

    def is_number(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    if len(items) % 2 == 0 and all(is_number(w) for w in items[0::2]):
        weights = [float(w) for w in items[0::2]]
        prefixes = items[1::2]
        for weight, prefix in zip(weights, prefixes):
            POSITIVE_NUMBER(f"the blend weight of {prefix!r}", weight)
        return prefixes, weights
    if any(is_number(item) for item in items):
        raise ConfigError(
            f"data_path {data_path!r} mixes weights and prefixes; write it as weight/prefix pairs "
            "(['0.7', 'a_text_document', '0.3', 'b_text_document']) or as prefixes only"
        )
    return items, None


def normalize(weights: list[float]) -> list[float]:
    array = np.asarray(weights, dtype=np.float64)
    return (array / np.sum(array)).tolist()


def samples_per_dataset(weights: list[float], wanted: int, surplus: float = 0.0) -> list[int]:
    """Megatron's per-corpus sample counts: ceil(ceil(wanted * weight) * (1 + surplus))."""
    return [int(math.ceil(math.ceil(wanted * w) * (1 + surplus))) for w in weights]


class BlendedDataset(MappedIndices, torch.utils.data.Dataset):
    """`size` samples drawn from `datasets` (packed or document mode) in the ratio `weights` (normalised)."""

    dataset_index: np.ndarray  # int16 [size]: which dataset serves sample i
    dataset_sample_index: np.ndarray  # int64 [size]: which of its samples

    def __init__(
        self,
        datasets: list[SplitDataset],
        weights: list[float],
        size: int,
        split: str,
        cache_dir: str | Path,
    ) -> None:
        if not datasets or len(datasets) != len(weights):
            raise ConfigError(f"need one weight per dataset, got {len(datasets)} datasets and {len(weights)} weights")
        if len(datasets) > np.iinfo(np.int16).max:
            raise ConfigError(f"at most {np.iinfo(np.int16).max} datasets can be blended, got {len(datasets)}")
        POSITIVE_INT("the size of a blend", size)
        self.datasets = datasets
        self.weights = normalize(weights)
        self.size = size
        self.split = split
        description = {
            "class": "BlendedDataset",
            "format_version": INDEX_FORMAT_VERSION,
            "datasets": [dataset.cache.key for dataset in datasets],
            "weights": self.weights,
            "size": size,
            "split": split,
        }
        self.cache = IndexCache(
            Path(cache_dir), f"BlendedDataset-{split}", description, ("dataset_index", "dataset_sample_index")
        )
        arrays = load_or_build(self.cache, self._build_indices)
        self.attach(arrays)
        self._check_not_oversampled()

    def attach(self, arrays: dict[str, np.ndarray]) -> None:
        self.dataset_index = arrays["dataset_index"]
        self.dataset_sample_index = arrays["dataset_sample_index"]

    def _build_indices(self) -> dict[str, np.ndarray]:
        dataset_index = np.zeros(self.size, dtype=np.int16)
        dataset_sample_index = np.zeros(self.size, dtype=np.int64)
        helpers.build_blending_indices(
            dataset_index,
            dataset_sample_index,
            np.asarray(self.weights, dtype=np.float64),
            len(self.datasets),
            self.size,
            False,
        )
        return {"dataset_index": dataset_index, "dataset_sample_index": dataset_sample_index}

    def _check_not_oversampled(self) -> None:
        if self.dataset_index.shape != (self.size,) or self.dataset_sample_index.shape != (self.size,):
            raise DataFormatError(f"index cache {self.cache.description_path} has the wrong length; delete its files")
        drawn = np.bincount(self.dataset_index, minlength=len(self.datasets))
        for i, (count, dataset) in enumerate(zip(drawn, self.datasets)):
            if count > len(dataset):
                raise DataFormatError(
                    f"the {self.split} blend draws {count} samples from dataset {i} "
                    f"({dataset.indexed.path_prefix}), which has only {len(dataset)}"
                )

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor | int]:
        if not -self.size <= idx < self.size:
            raise IndexError(f"sample {idx} is out of range for a blend of {self.size} samples")
        dataset_id = int(self.dataset_index[idx])
        sample: dict[str, torch.Tensor | int] = {**self.datasets[dataset_id][int(self.dataset_sample_index[idx])]}
        sample["dataset_id"] = dataset_id
        return sample
