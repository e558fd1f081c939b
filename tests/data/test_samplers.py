"""PretrainingSampler / build_pretraining_data_loader: Megatron's semantics, exact resume, DP slicing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from gpt_corpus import random_documents, write_corpus

from megatron_zh.data.datasets.builder import build_train_valid_test_datasets
from megatron_zh.data.datasets.config import DatasetConfig
from megatron_zh.data.datasets.samplers import PretrainingSampler, build_pretraining_data_loader
from megatron_zh.errors import ConfigError


def megatron_reference(total, consumed, micro, rank, world, drop_last=True):
    """MegatronPretrainingSampler, restated: collect micro*world consecutive indices, yield this rank's slice."""
    batch = []
    for idx in range(consumed, total):
        batch.append(idx)
        if len(batch) == micro * world:
            yield batch[rank * micro : (rank + 1) * micro]
            batch = []
    if batch and not drop_last:
        part = batch[rank * micro : (rank + 1) * micro]
        if part:
            yield part


@pytest.mark.parametrize("drop_last", [True, False])
def test_matches_megatron_semantics(drop_last):
    for total, consumed, micro, world in itertools.product((1, 7, 64, 101), (0, 3, 6), (1, 2, 4), (1, 2, 3)):
        if consumed >= total:
            continue
        for rank in range(world):
            sampler = PretrainingSampler(total, consumed, micro, rank, world, drop_last)
            expected = list(megatron_reference(total, consumed, micro, rank, world, drop_last))
            assert list(sampler) == expected
            assert len(sampler) == len(expected)


def test_resume_continues_with_exactly_the_next_sample():
    micro, world, total = 4, 2, 1000
    global_batch = micro * world
    full = [list(PretrainingSampler(total, 0, micro, r, world)) for r in range(world)]
    for k in (1, 5, 17):
        resumed = [list(PretrainingSampler(total, k * global_batch, micro, r, world)) for r in range(world)]
        for rank in range(world):
            assert resumed[rank] == full[rank][k:]


def test_data_parallel_ranks_partition_the_global_batch():
    micro, world = 3, 2
    single = list(PretrainingSampler(600, 24, micro * world, 0, 1))
    per_rank = [list(PretrainingSampler(600, 24, micro, r, world)) for r in range(world)]
    for step, global_batch in enumerate(single):
        assert per_rank[0][step] + per_rank[1][step] == global_batch


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 0, 1, 0, 1), "no samples"),
        ((10, 10, 1, 0, 1), "consumed_samples=10"),
        ((10, -1, 1, 0, 1), "consumed_samples=-1"),
        ((10, 0, 0, 0, 1), "micro_batch_size"),
        ((10, 0, 1, 2, 2), "data_parallel_rank"),
    ],
)
def test_bad_arguments(args, message):
    with pytest.raises(ConfigError, match=message):
        PretrainingSampler(*args)


@pytest.fixture(scope="module")
def train_dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sampler")
    prefix = write_corpus(directory / "corpus", random_documents(np.random.default_rng(20), 400))
    config = DatasetConfig(data_path=[prefix], seq_length=32, split="1", data_cache_path=str(directory / "cache"))
    return build_train_valid_test_datasets(config, (600, 0, 0))[0]


def test_data_loader_resumes_on_identical_sequences(train_dataset):
    micro, world, steps, k = 4, 2, 12, 5
    global_batch = micro * world

    def batches(rank, consumed, count):
        loader = build_pretraining_data_loader(train_dataset, consumed, micro, rank, world)
        return [batch["input_ids"] for batch in itertools.islice(loader, count)]

    for rank in range(world):
        uninterrupted = batches(rank, 0, steps)
        resumed = batches(rank, k * global_batch, steps - k)
        assert all(b.shape == (micro, 32) for b in uninterrupted)
        for a, b in zip(uninterrupted[k:], resumed):
            assert torch.equal(a, b)
    # Two ranks together see exactly what one rank with the whole global batch sees.
    whole = build_pretraining_data_loader(train_dataset, 0, global_batch, 0, 1)
    single = [batch["input_ids"] for batch in itertools.islice(whole, steps)]
    split = [batches(r, 0, steps) for r in range(world)]
    for step in range(steps):
        assert torch.equal(torch.cat([split[r][step] for r in range(world)]), single[step])


def test_data_loader_with_workers_matches_in_process(train_dataset):
    in_process = [b["labels"] for b in itertools.islice(build_pretraining_data_loader(train_dataset, 16, 8, 0, 1), 6)]
    workers = [
        b["labels"]
        for b in itertools.islice(build_pretraining_data_loader(train_dataset, 16, 8, 0, 1, num_workers=2), 6)
    ]
    assert all(torch.equal(a, b) for a, b in zip(in_process, workers))


def test_none_dataset_gives_none():
    assert build_pretraining_data_loader(None, 0, 4, 0, 1) is None
