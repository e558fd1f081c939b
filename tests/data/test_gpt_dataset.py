"""GPTDataset: indices and samples against megatron-core and the definition; cache; splits; errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gpt_corpus import EOD, assert_same_indices, megatron_datasets, random_documents, write_corpus

from megatron_zh.data.datasets import gpt_dataset
from megatron_zh.data.datasets.builder import build_train_valid_test_datasets
from megatron_zh.data.datasets.config import DatasetConfig, VocabIds
from megatron_zh.data.datasets.splits import split_ranges
from megatron_zh.data.indexed.dataset import write_metadata
from megatron_zh.errors import ConfigError, DataFormatError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    return write_corpus(tmp_path_factory.mktemp("corpus") / "synthetic_text_document", random_documents(rng, 3000))


def _stream_windows(dataset) -> None:
    """Definition check: unshuffled sample r is tokens [r*seq, r*seq + seq + 1) of the documents of
    the document index, concatenated."""
    stream = np.concatenate([dataset.indexed[int(d)] for d in dataset.document_index]).astype(np.int64)
    seq = dataset.seq_length
    inverse = np.empty(len(dataset), dtype=np.int64)
    inverse[np.asarray(dataset.shuffle_index, dtype=np.int64)] = np.arange(len(dataset))
    for row in list(range(0, len(dataset), max(1, len(dataset) // 150))) + [len(dataset) - 1]:
        np.testing.assert_array_equal(dataset[int(inverse[row])]["tokens"], stream[row * seq : row * seq + seq + 1])


@pytest.mark.parametrize(
    "seq_length, sizes",
    [
        (64, (1000, 50, 10)),  # under one epoch
        (128, (9000, 700, 30)),  # several epochs, last one kept in the global shuffle
        (128, (4200, 300, 60)),  # last epoch small: shuffled apart
        (1024, (700, 20, 5)),  # sequences longer than most documents
    ],
)
def test_indices_and_samples_match_megatron_core(corpus, tmp_path, seq_length, sizes):
    config = DatasetConfig(data_path=[corpus], seq_length=seq_length, seed=4321, data_cache_path=str(tmp_path / "ours"))
    ours = build_train_valid_test_datasets(config, sizes)
    theirs = megatron_datasets(([corpus], None), "949,50,1", sizes, seq_length, 4321, tmp_path / "theirs")
    for mine, reference, wanted in zip(ours, theirs, sizes):
        assert_same_indices(mine, reference)
        assert len(mine) == len(reference) >= wanted
        for i in range(0, len(mine), max(1, len(mine) // 200)):
            sample, expected = mine[i], reference[i]
            np.testing.assert_array_equal(sample["input_ids"], expected["tokens"].numpy())
            np.testing.assert_array_equal(sample["labels"], expected["labels"].numpy())
        _stream_windows(mine)


def test_real_preprocessed_corpus_matches_megatron_core(zh_text_document, tmp_path):
    """The real CLUECorpusSmall sample as tools/preprocess_data.py writes it ([CLS] ... [SEP], metadata)."""
    from megatron_zh.text.tokenizer import BertChineseTokenizer

    prefix = zh_text_document["prefix"]
    tokenizer = BertChineseTokenizer(zh_text_document["vocab"])
    config = DatasetConfig(
        data_path=[prefix],
        seq_length=128,
        split="98,2,0",
        seed=7,
        data_cache_path=str(tmp_path),
        eod_mask_loss=True,  # the end-of-document id comes from the dataset's metadata
    )
    train, valid, test = build_train_valid_test_datasets(config, (3000, 100, 0), VocabIds(tokenizer.fingerprint))
    assert test is None and train.eod_token == tokenizer.eod
    theirs = megatron_datasets(([prefix], None), "98,2,0", (3000, 100, 0), 128, 7, None)
    for mine, reference in zip((train, valid), theirs[:2]):
        assert_same_indices(mine, reference)
        for i in range(0, len(mine), 37):
            np.testing.assert_array_equal(mine[i]["input_ids"], reference[i]["tokens"].numpy())
    sample = train[0]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in tokenizer.decode(sample["tokens"].tolist()))  # real Chinese text
    np.testing.assert_array_equal(sample["loss_mask"], (sample["input_ids"] != tokenizer.eod).float())


def test_sample_fields_and_collation(corpus, tmp_path):
    config = DatasetConfig(data_path=[corpus], seq_length=32, split="1", data_cache_path=str(tmp_path))
    train, valid, test = build_train_valid_test_datasets(config, (100, 0, 0))
    assert valid is None and test is None
    sample = train[5]
    assert sample["tokens"].dtype == torch.int64 and sample["tokens"].shape == (33,)
    assert torch.equal(sample["input_ids"], sample["tokens"][:-1])
    assert torch.equal(sample["labels"], sample["tokens"][1:])
    assert sample["loss_mask"].dtype == torch.float32 and bool((sample["loss_mask"] == 1).all())
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch["input_ids"].shape == (4, 32) and batch["input_ids"].dtype == torch.int64
    assert batch["loss_mask"].dtype == torch.float32
    with pytest.raises(IndexError):
        train[len(train)]


def test_eod_mask_loss_masks_inputs_that_end_a_document(corpus, tmp_path):
    config = DatasetConfig(
        data_path=[corpus], seq_length=64, split="1", data_cache_path=str(tmp_path), eod_mask_loss=True
    )
    train, _, _ = build_train_valid_test_datasets(config, (200, 0, 0), VocabIds(eod=EOD))
    masked = 0
    for i in range(50):
        sample = train[i]
        np.testing.assert_array_equal(sample["loss_mask"] == 0, sample["input_ids"] == EOD)
        masked += int((sample["loss_mask"] == 0).sum())
    assert masked > 0


def test_eod_mask_loss_reads_eod_from_metadata_or_asks(tmp_path):
    prefix = write_corpus(tmp_path / "c", random_documents(np.random.default_rng(1), 50))
    config = DatasetConfig(data_path=[prefix], seq_length=16, split="1", eod_mask_loss=True)
    with pytest.raises(ConfigError, match="eod_mask_loss needs the end-of-document id: .*has no 'eod' entry"):
        build_train_valid_test_datasets(config, (10, 0, 0))
    write_metadata(prefix, {"eod": EOD, "vocab_fingerprint": "sha256:abc"})
    train, _, _ = build_train_valid_test_datasets(config, (10, 0, 0))
    assert train.eod_token == EOD


# ------------------------------------------------------------------------------------------------
# Splits


@pytest.mark.parametrize("split", ["949,50,1", "98,2", "1", "100,0,0", "0,1,0", "1/1/1", "969, 30, 1", "0.7,0.2,0.1"])
def test_split_ranges_match_megatron_core(split):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_config import (
            convert_split_vector_to_split_matrix,
            parse_and_normalize_split,
        )
    assert split_ranges(split) == convert_split_vector_to_split_matrix(parse_and_normalize_split(split))


@pytest.mark.parametrize("split", ["", "a,b", "1,2,3,4", "-1,2", "0,0,0", "nan,1"])
def test_bad_split_strings_are_rejected(split):
    with pytest.raises(ConfigError, match="split"):
        DatasetConfig(data_path=["x"], seq_length=8, split=split)


def test_empty_split_is_an_error_not_a_hang(tmp_path):
    prefix = write_corpus(tmp_path / "tiny", random_documents(np.random.default_rng(2), 100))
    config = DatasetConfig(data_path=[prefix], seq_length=8, split="949,50,1")
    with pytest.raises(DataFormatError, match=r"test split .* fewer than 2 tokens"):
        build_train_valid_test_datasets(config, (10, 5, 5))
    # Asking for no test samples is fine.
    train, valid, test = build_train_valid_test_datasets(config, (10, 5, 0))
    assert test is None and len(valid) >= 5


# ------------------------------------------------------------------------------------------------
# Cache


def _cache_files(directory: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir() if p.suffix in (".npy", ".json")}


def test_second_build_loads_the_cache(corpus, tmp_path, monkeypatch):
    config = DatasetConfig(data_path=[corpus], seq_length=64, data_cache_path=str(tmp_path))
    first = build_train_valid_test_datasets(config, (500, 20, 5))
    files = _cache_files(tmp_path)
    assert len(files) == 3 * 4  # per split: description + 3 arrays

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although the cache was complete")

    monkeypatch.setattr(gpt_dataset, "build_gpt_indices", fail)
    second = build_train_valid_test_datasets(config, (500, 20, 5))
    assert _cache_files(tmp_path) == files
    for a, b in zip(first, second):
        assert isinstance(b.sample_index.base, np.memmap) and not b.sample_index.flags.writeable
        np.testing.assert_array_equal(a.sample_index, b.sample_index)
        np.testing.assert_array_equal(a.shuffle_index, b.shuffle_index)


@pytest.mark.parametrize(
    "change",
    [dict(seq_length=65), dict(seed=1), dict(split="900,99,1"), "num_samples"],
)
def test_cache_key_changes_with_what_determines_the_indices(corpus, tmp_path, change):
    base = dict(data_path=[corpus], seq_length=64, data_cache_path=str(tmp_path))
    train, _, _ = build_train_valid_test_datasets(DatasetConfig(**base), (300, 0, 0))
    same, _, _ = build_train_valid_test_datasets(DatasetConfig(**base), (300, 0, 0))
    assert same.cache.key == train.cache.key
    if change == "num_samples":
        other, _, _ = build_train_valid_test_datasets(DatasetConfig(**base), (301, 0, 0))
    else:
        other, _, _ = build_train_valid_test_datasets(DatasetConfig(**{**base, **change}), (300, 0, 0))
    assert other.cache.key != train.cache.key
    assert other.cache.path("sample_index").is_file() and train.cache.path("sample_index").is_file()


def test_cache_key_follows_the_document_lengths_not_the_path(tmp_path):
    documents = random_documents(np.random.default_rng(3), 300)
    a = write_corpus(tmp_path / "a", documents)
    b = write_corpus(tmp_path / "b", documents)  # same content elsewhere: same indices
    c = write_corpus(tmp_path / "c", documents[:-1] + [documents[-1][:-1]])  # one token fewer
    keys = []
    for prefix in (a, b, c):
        train, _, _ = build_train_valid_test_datasets(
            DatasetConfig(data_path=[prefix], seq_length=16, split="1", data_cache_path=str(tmp_path / "cache")),
            (100, 0, 0),
        )
        keys.append(train.cache.key)
    assert keys[0] == keys[1] != keys[2]


def test_damaged_cache_file_is_rebuilt(corpus, tmp_path):
    config = DatasetConfig(data_path=[corpus], seq_length=64, split="1", data_cache_path=str(tmp_path))
    train, _, _ = build_train_valid_test_datasets(config, (400, 0, 0))
    expected = np.array(train.sample_index)
    path = train.cache.path("sample_index")
    del train
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    train, _, _ = build_train_valid_test_datasets(config, (400, 0, 0))
    np.testing.assert_array_equal(train.sample_index, expected)


_BUILDER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from megatron_zh.data.datasets import gpt_dataset
    from megatron_zh.data.datasets.builder import build_train_valid_test_datasets
    from megatron_zh.data.datasets.config import DatasetConfig

    corpus, cache, report, go = sys.argv[1:5]
    real_build = gpt_dataset.build_gpt_indices
    builds = []
    def slow_build(*args, **kwargs):
        builds.append(1)
        time.sleep(0.5)  # widen the race window: the other process must find the lock taken
        return real_build(*args, **kwargs)
    gpt_dataset.build_gpt_indices = slow_build
    while time.time() < float(go):
        time.sleep(0.005)
    config = DatasetConfig(data_path=[corpus], seq_length=64, split="1", data_cache_path=cache)
    train, _, _ = build_train_valid_test_datasets(config, (2000, 0, 0))
    json.dump({"builds": len(builds), "tokens": [train[i]["tokens"].tolist() for i in range(0, len(train), 97)]},
              open(report, "w"))
    """
)


@pytest.mark.integration
def test_two_processes_sharing_a_cache_dir_build_once(corpus, tmp_path, repo_root):
    cache = tmp_path / "shared-cache"
    go = f"{__import__('time').time() + 3.0}"  # both start building at the same moment
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER_SCRIPT, corpus, str(cache), str(tmp_path / f"r{i}.json"), go], env=env
        )
        for i in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    reports = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    assert sorted(r["builds"] for r in reports) == [0, 1]  # one built, the other waited and loaded
    assert reports[0]["tokens"] == reports[1]["tokens"]
    assert not list(cache.glob("*.tmp"))  # no temporary leftovers
    config = DatasetConfig(data_path=[corpus], seq_length=64, split="1", data_cache_path=str(tmp_path / "alone"))
    alone, _, _ = build_train_valid_test_datasets(config, (2000, 0, 0))
    for name in ("document_index", "sample_index", "shuffle_index", "description"):
        suffix = ".json" if name == "description" else ".npy"
        shared = cache / alone.cache.path(name).name if suffix == ".npy" else cache / alone.cache.description_path.name
        reference = alone.cache.path(name) if suffix == ".npy" else alone.cache.description_path
        assert shared.read_bytes() == reference.read_bytes(), name


# ------------------------------------------------------------------------------------------------
# Errors


def test_missing_files_name_the_path_and_the_fix(tmp_path):
    config = DatasetConfig(data_path=[str(tmp_path / "nothing")], seq_length=16)
    with pytest.raises(DataFormatError, match=r"nothing\.idx not found.*tools/preprocess_data\.py"):
        build_train_valid_test_datasets(config, (10, 1, 1))
    write_corpus(tmp_path / "corpus_text_document", random_documents(np.random.default_rng(4), 20))
    config = DatasetConfig(data_path=[str(tmp_path / "corpus")], seq_length=16)
    with pytest.raises(DataFormatError, match="did you mean .*corpus_text_document"):
        build_train_valid_test_datasets(config, (10, 1, 1))


def test_vocab_fingerprint_mismatch_names_file_and_both_fingerprints(tmp_path):
    prefix = write_corpus(tmp_path / "c", random_documents(np.random.default_rng(5), 200))
    write_metadata(prefix, {"vocab_fingerprint": "sha256:aaaa", "vocab_size": 21128})
    config = DatasetConfig(data_path=[prefix], seq_length=16, split="1")
    with pytest.raises(DataFormatError, match=r"c\.meta\.json.*sha256:aaaa.*sha256:bbbb"):
        build_train_valid_test_datasets(config, (10, 0, 0), VocabIds("sha256:bbbb"))
    assert len(build_train_valid_test_datasets(config, (10, 0, 0), VocabIds("sha256:aaaa"))[0]) >= 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(data_path="a_text_document", seq_length=8), "non-empty list"),
        (dict(data_path=[], seq_length=8), "non-empty list"),
        (dict(data_path=["a"], seq_length=1), "seq_length"),
        (dict(data_path=["a"], seq_length=8, seed=-1), "seed"),
    ],
)
def test_config_is_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DatasetConfig(**kwargs)


def test_unwritable_cache_dir_says_what_to_do(corpus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = DatasetConfig(data_path=[corpus], seq_length=16, split="1", data_cache_path=str(blocker / "cache"))
    with pytest.raises(ConfigError, match="cache_dir"):
        build_train_valid_test_datasets(config, (10, 0, 0))


_RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from megatron_zh.data.datasets import gpt_dataset
    from megatron_zh.data.datasets.builder import build_train_valid_test_datasets
    from megatron_zh.data.datasets.config import DatasetConfig

    corpus, cache, store, rank = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    real_build = gpt_dataset.build_gpt_indices
    builds, fail_on_rank0 = [], [False]
    def counted_build(*args, **kwargs):
        builds.append(1)
        if fail_on_rank0[0] and rank == 0:
            raise RuntimeError("disk full (simulated)")
        return real_build(*args, **kwargs)
    gpt_dataset.build_gpt_indices = counted_build

    config = DatasetConfig(data_path=[corpus], seq_length=64, data_cache_path=cache)
    splits = build_train_valid_test_datasets(config, (800, 40, 8))
    result = {"builds": len(builds), "first": [int(d[0]["tokens"][0]) for d in splits]}

    fail_on_rank0[0] = True  # a second, uncached build that fails on rank 0
    try:
        config = DatasetConfig(data_path=[corpus], seq_length=65, data_cache_path=cache)
        build_train_valid_test_datasets(config, (800, 40, 8))
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result))
    dist.destroy_process_group()
    """
)


@pytest.mark.integration
def test_rank0_builds_while_other_ranks_wait_and_its_failure_reaches_them(corpus, tmp_path, repo_root):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK_SCRIPT, corpus, str(tmp_path / "cache"), str(tmp_path / "store"), str(rank)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    rank0, rank1 = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert rank0["builds"] == 3 and rank1["builds"] == 0  # one build per split, all on rank 0
    assert rank0["first"] == rank1["first"]
    # Rank 0's failure is raised on every rank instead of leaving rank 1 waiting at a barrier.
    assert rank0["error"] == "RuntimeError: disk full (simulated)"
    assert "rank 0 failed to build the dataset indices: RuntimeError: disk full (simulated)" in rank1["error"]
