"""Resumable, data-parallel batch sampling (Megatron's MegatronPretrainingSampler).

The dataset is read in order from sample `consumed_samples` on (it is already shuffled by its
shuffle index). Each global step takes `micro_batch_size * data_parallel_size` consecutive
samples and rank r gets the r-th slice of `micro_batch_size`. `consumed_samples` counts samples
over all ranks, so a job restarted from a checkpoint with its consumed_samples continues with
exactly the next sample, whatever its data-parallel size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import cast

import torch

from megatron_zh.errors import ConfigError


class PretrainingSampler:
    """A batch sampler yielding this rank's micro-batches of dataset indices."""

    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        drop_last: bool = True,
    ) -> None:
        if total_samples <= 0:
            raise ConfigError(f"the dataset has no samples to draw (total_samples={total_samples})")
        if micro_batch_size <= 0:
            raise ConfigError(f"micro_batch_size must be positive, got {micro_batch_size}")
        if data_parallel_size <= 0 or not 0 <= data_parallel_rank < data_parallel_size:
            raise ConfigError(f"data_parallel_rank must be in [0, {data_parallel_size}), got {data_parallel_rank}")
        if not 0 <= consumed_samples < total_samples:
            raise ConfigError(
                f"consumed_samples={consumed_samples} leaves nothing to draw from a dataset of "
                f"{total_samples} samples; build the dataset for more samples (train iterations x global batch)"
            )
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.drop_last = drop_last
        self.samples_per_step = micro_batch_size * data_parallel_size

    def __len__(self) -> int:
        """Number of micro-batches this rank will yield."""
        remaining = self.total_samples - self.consumed_samples
        full, partial = divmod(remaining, self.samples_per_step)
        return full + (1 if partial > self.data_parallel_rank * self.micro_batch_size and not self.drop_last else 0)

    def __iter__(self) -> Iterator[list[int]]:
        start = self.data_parallel_rank * self.micro_batch_size
        for step_begin in range(self.consumed_samples, self.total_samples, self.samples_per_step):
            step_end = min(step_begin + self.samples_per_step, self.total_samples)
            if step_end - step_begin < self.samples_per_step and self.drop_last:
                return
            # A partial final step: ranks past its end get nothing (Megatron would yield []).
            batch = list(range(step_begin + start, min(step_begin + start + self.micro_batch_size, step_end)))
            if batch:
                yield batch


def build_pretraining_data_loader(
    dataset: torch.utils.data.Dataset | None,
    consumed_samples: int,
    micro_batch_size: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader | None:
    """A DataLoader over `dataset` that resumes after `consumed_samples` (None for a None dataset)."""
    if dataset is None:
        return None
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    sampler = PretrainingSampler(
        total_samples=len(cast(Sized, dataset)),  # map-style datasets (ours) have a length
        consumed_samples=consumed_samples,
        micro_batch_size=micro_batch_size,
        data_parallel_rank=data_parallel_rank,
        data_parallel_size=data_parallel_size,
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
