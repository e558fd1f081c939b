"""Weighted blends against megatron-core's BlendedDataset; data_path parsing; caching."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from gpt_corpus import assert_same_indices, megatron_datasets, random_documents, write_corpus

from megatron_zh.data.datasets import builder
from megatron_zh.data.datasets.blended_dataset import BlendedDataset, parse_data_path, samples_per_dataset
from megatron_zh.data.datasets.builder import build_train_valid_test_datasets
from megatron_zh.data.datasets.config import DatasetConfig
from megatron_zh.data.datasets.gpt_dataset import GPTDataset
from megatron_zh.errors import ConfigError


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[str, str, str]:
    directory = tmp_path_factory.mktemp("corpora")
    rng = np.random.default_rng(10)
    return tuple(
        write_corpus(directory / f"{name}_text_document", random_documents(rng, count, max_length))
        for name, count, max_length in (("a", 2500, 300), ("b", 1500, 120), ("c", 2000, 600))
    )


@pytest.mark.parametrize(
    "weights, sizes",
    [
        ((0.7, 0.3), (5000, 300, 40)),
        ((20, 50, 30), (3000, 200, 20)),  # unnormalised weights, three corpora
    ],
)
def test_blend_matches_megatron_core(corpora, tmp_path, weights, sizes):
    prefixes = list(corpora[: len(weights)])
    data_path = [item for pair in zip(map(str, weights), prefixes) for item in pair]
    config = DatasetConfig(data_path=data_path, seq_length=64, data_cache_path=str(tmp_path))
    ours = build_train_valid_test_datasets(config, sizes)
    theirs = megatron_datasets((prefixes, list(weights)), "949,50,1", sizes, 64, 1234, None)
    for mine, reference, wanted in zip(ours, theirs, sizes):
        assert isinstance(mine, BlendedDataset)
        assert len(mine) == len(reference) >= wanted
        np.testing.assert_array_equal(mine.dataset_index, reference.dataset_index)
        np.testing.assert_array_equal(mine.dataset_sample_index, reference.dataset_sample_index)
        for part, reference_part in zip(mine.datasets, reference.datasets):
            assert_same_indices(part, reference_part)
        for i in range(0, len(mine), max(1, len(mine) // 150)):
            sample, expected = mine[i], reference[i]
            assert int(sample["dataset_id"]) == int(expected["dataset_id"])
            np.testing.assert_array_equal(sample["input_ids"], expected["tokens"].numpy())


def test_blend_ratio_holds_on_every_prefix(corpora, tmp_path):
    config = DatasetConfig(
        data_path=["0.7", corpora[0], "0.3", corpora[1]], seq_length=32, split="1", data_cache_path=str(tmp_path)
    )
    train, _, _ = build_train_valid_test_datasets(config, (10_000, 0, 0))
    drawn = np.cumsum(np.asarray(train.dataset_index) == 0)
    steps = np.arange(1, len(drawn) + 1)
    assert np.abs(drawn - 0.7 * steps).max() <= 1.0  # never more than one sample off the ratio
    # Each corpus was asked for its share plus Megatron's 0.5% margin.
    assert [part.num_samples for part in train.datasets] == samples_per_dataset([0.7, 0.3], 10_000, 0.005)
    assert train.datasets[0].num_samples == 7035


def test_unweighted_prefixes_blend_by_token_count(corpora, tmp_path):
    config = DatasetConfig(data_path=[corpora[0], corpora[1]], seq_length=32, split="1", data_cache_path=str(tmp_path))
    train, _, _ = build_train_valid_test_datasets(config, (4000, 0, 0))
    tokens = np.array([part.indexed.sequence_lengths.sum() for part in train.datasets], dtype=np.float64)
    np.testing.assert_allclose(train.weights, tokens / tokens.sum())


def test_blend_cache_hit_and_key(corpora, tmp_path, monkeypatch):
    config = DatasetConfig(
        data_path=["0.6", corpora[0], "0.4", corpora[2]], seq_length=64, split="1", data_cache_path=str(tmp_path)
    )
    first, _, _ = build_train_valid_test_datasets(config, (2000, 0, 0))
    monkeypatch.setattr(BlendedDataset, "_build_indices", lambda self: pytest.fail("blend rebuilt despite its cache"))
    second, _, _ = build_train_valid_test_datasets(config, (2000, 0, 0))
    assert isinstance(second.dataset_index.base, np.memmap)
    np.testing.assert_array_equal(first.dataset_index, second.dataset_index)
    monkeypatch.undo()
    other = DatasetConfig(
        data_path=["0.5", corpora[0], "0.5", corpora[2]], seq_length=64, split="1", data_cache_path=str(tmp_path)
    )
    third, _, _ = build_train_valid_test_datasets(other, (2000, 0, 0))
    assert third.cache.key != first.cache.key


def test_zero_samples_or_zero_split_weight_give_none(corpora, tmp_path):
    config = DatasetConfig(
        data_path=["1", corpora[0], "1", corpora[1]], seq_length=64, split="90,10,0", data_cache_path=str(tmp_path)
    )
    train, valid, test = build_train_valid_test_datasets(config, (100, 0, 50))
    assert isinstance(train, BlendedDataset) and valid is None and test is None


def test_single_corpus_is_not_wrapped(corpora, tmp_path):
    config = DatasetConfig(data_path=[corpora[0]], seq_length=64, split="1", data_cache_path=str(tmp_path))
    train, _, _ = build_train_valid_test_datasets(config, (100, 0, 0))
    assert isinstance(train, GPTDataset)


def test_oversampled_corpus_is_reported(corpora, tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "MID_LEVEL_SURPLUS", -0.5)  # build too few per corpus
    config = DatasetConfig(
        data_path=["0.5", corpora[0], "0.5", corpora[1]], seq_length=64, split="1", data_cache_path=str(tmp_path)
    )
    with pytest.raises(Exception, match="draws .* samples from dataset"):
        build_train_valid_test_datasets(config, (200_000, 0, 0))


@pytest.mark.parametrize(
    "data_path, expected",
    [
        (["a"], (["a"], None)),
        (["0.7", "a", "0.3", "b"], (["a", "b"], [0.7, 0.3])),
        (["1", "a"], (["a"], [1.0])),
        (["a", "b"], (["a", "b"], None)),
        ([" 30 ", " a ", "70", "b"], (["a", "b"], [30.0, 70.0])),
    ],
)
def test_parse_data_path(data_path, expected):
    assert parse_data_path(data_path) == expected


@pytest.mark.parametrize(
    "data_path", [["0.7", "a", "b"], ["0", "a", "1", "b"], ["-1", "a", "2", "b"], ["nan", "a", "1", "b"]]
)
def test_bad_data_path_is_rejected(data_path):
    with pytest.raises(ConfigError):
        parse_data_path(data_path)


def test_blend_pickles_without_its_indices(corpora, tmp_path):
    config = DatasetConfig(
        data_path=["0.5", corpora[0], "0.5", corpora[1]], seq_length=64, split="1", data_cache_path=str(tmp_path)
    )
    train, _, _ = build_train_valid_test_datasets(config, (20_000, 0, 0))
    payload = pickle.dumps(train)
    assert len(payload) < 20_000 < train.dataset_sample_index.nbytes  # paths and settings, not arrays
    copy = pickle.loads(payload)
    for i in range(0, len(train), 997):
        np.testing.assert_array_equal(copy[i]["tokens"], train[i]["tokens"])
