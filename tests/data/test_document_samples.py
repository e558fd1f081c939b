"""sample_mode "document": every document cut on its own into seq_length + 1 token chunks, UER-py's LmDataset rule.

The rule checked (UER-py uer/utils/data.py, LmDataset.worker): document tokens [CLS] ... [SEP] are
cut into consecutive, non-overlapping chunks; chunk j covers tokens [j * (seq + 1), (j + 1) * (seq + 1)),
the last one is kept and padded with [PAD], and no chunk crosses a document boundary.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gpt_corpus import random_documents, write_corpus

from megatron_zh.data.datasets import helpers
from megatron_zh.data.datasets.blended_dataset import BlendedDataset
from megatron_zh.data.datasets.builder import build_train_valid_test_datasets
from megatron_zh.data.datasets.config import DatasetConfig, VocabIds
from megatron_zh.data.datasets.document_dataset import DocumentDataset
from megatron_zh.data.datasets.gpt_dataset import GPTDataset
from megatron_zh.data.datasets.samplers import build_pretraining_data_loader
from megatron_zh.data.indexed.dataset import IndexedDataset
from megatron_zh.errors import ConfigError
from megatron_zh.text.tokenizer import BertChineseTokenizer


def reference_chunk_idx(sizes: np.ndarray, begin: int, end: int, chunk_length: int) -> np.ndarray:
    """The rule in NumPy: (document, offset) for offsets 0, L, 2L, ... below each document's length."""
    rows = [(d, offset) for d in range(begin, end) for offset in range(0, int(sizes[d]), chunk_length)]
    return np.asarray(rows, dtype=np.int32).reshape(-1, 2)


@pytest.mark.parametrize("chunk_length", [1, 2, 7, 65, 1000])
def test_cpp_chunk_index_matches_the_numpy_rule(chunk_length):
    rng = np.random.default_rng(chunk_length)
    sizes = rng.integers(0, 300, 2000).astype(np.int32)
    sizes[::17] = 0  # empty documents have no chunk
    sizes[5] = chunk_length  # exactly one chunk, nothing left to pad
    for begin, end in [(0, 2000), (13, 1500), (700, 700)]:
        built = helpers.build_document_chunk_idx(sizes, begin, end, chunk_length)
        assert built.dtype == np.int32 and built.shape[1:] == (2,)
        np.testing.assert_array_equal(built, reference_chunk_idx(sizes, begin, end, chunk_length))


def test_cpp_chunk_index_rejects_bad_input():
    sizes = np.array([3, -1, 4], dtype=np.int32)
    with pytest.raises(ValueError, match=r"sizes\[1\] is negative"):
        helpers.build_document_chunk_idx(sizes, 0, 3, 2)
    with pytest.raises(IndexError, match="outside the 3 documents"):
        helpers.build_document_chunk_idx(sizes, 0, 4, 2)
    with pytest.raises(TypeError, match="int32"):
        helpers.build_document_chunk_idx(sizes.astype(np.int64), 0, 1, 2)
    with pytest.raises(ValueError, match="chunk_length"):
        helpers.build_document_chunk_idx(sizes, 0, 1, 0)


PAD0 = VocabIds(pad=0)  # BERT-Chinese's [PAD]


def _config(prefix: str, tmp_path, **overrides) -> DatasetConfig:
    values = {"data_path": [prefix], "seq_length": 32, "split": "90,8,2", "seed": 7, "data_cache_path": str(tmp_path)}
    values.update(overrides)
    return DatasetConfig(sample_mode=values.pop("sample_mode", "document"), **values)


def _expected_sample(document: np.ndarray, offset: int, seq: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    real = document[offset : offset + seq + 1].astype(np.int64)
    tokens = np.full(seq + 1, pad, dtype=np.int64)
    tokens[: len(real)] = real
    loss_mask = (np.arange(seq) < len(real) - 1).astype(np.float32)
    return tokens, loss_mask


def test_real_corpus_samples_follow_uer_rule_and_cover_each_token_once_per_epoch(zh_text_document, tmp_path):
    pad = BertChineseTokenizer(zh_text_document["vocab"]).pad
    assert pad == 0  # BERT-Chinese's [PAD]; read from the vocab above, never assumed in the code
    seq = 32
    config = _config(zh_text_document["prefix"], tmp_path, seq_length=seq)
    train, valid, _ = build_train_valid_test_datasets(config, (1, 1, 0), VocabIds(pad=pad))
    assert isinstance(train, DocumentDataset) and isinstance(valid, DocumentDataset)
    indexed = IndexedDataset(zh_text_document["prefix"])
    begin, end = train.document_range
    first = indexed[begin]
    assert first[0] == 101 and first[-1] == 102  # [CLS] ... [SEP], as UER-py frames a line

    chunks = train.chunks_per_epoch
    seen = {d: np.zeros(int(indexed.sequence_lengths[d]), dtype=np.int32) for d in range(begin, end)}
    padded = 0
    for i in range(chunks):  # one epoch
        document, offset, real = train.chunk(i)
        assert begin <= document < end and offset % (seq + 1) == 0
        sample = train[i]
        tokens, loss_mask = _expected_sample(indexed[document], offset, seq, pad)
        np.testing.assert_array_equal(sample["tokens"].numpy(), tokens)
        np.testing.assert_array_equal(sample["loss_mask"].numpy(), loss_mask)
        assert torch.equal(sample["input_ids"], sample["tokens"][:-1])
        assert torch.equal(sample["labels"], sample["tokens"][1:])
        assert not (sample["loss_mask"].bool() & (sample["labels"] == pad)).any()  # no [PAD] label is scored
        seen[document][offset : offset + len(real)] += 1
        padded += len(real) < seq + 1
    assert all((counts == 1).all() for counts in seen.values())  # every token of every document, once
    assert padded == sum(1 for d in range(begin, end) if indexed.sequence_lengths[d] % (seq + 1))
    assert padded > 0 and chunks > end - begin  # both short tails and multi-chunk documents occur


def test_epochs_are_separate_permutations_and_cache_is_keyed_by_mode(zh_text_document, tmp_path):
    prefix = zh_text_document["prefix"]
    config = _config(prefix, tmp_path)
    one_epoch, _, _ = build_train_valid_test_datasets(config, (1, 1, 0), PAD0)
    assert isinstance(one_epoch, DocumentDataset)
    chunks = one_epoch.chunks_per_epoch
    train, _, _ = build_train_valid_test_datasets(config, (2 * chunks + 5, 1, 0), PAD0)
    assert isinstance(train, DocumentDataset) and len(train) == 3 * chunks
    for epoch in np.asarray(train.shuffle_index).reshape(3, chunks):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(chunks))
    # Same documents and seed, so the first epoch is the same, whatever the number of epochs.
    np.testing.assert_array_equal(train.shuffle_index[:chunks], one_epoch.shuffle_index)

    packed, _, _ = build_train_valid_test_datasets(_config(prefix, tmp_path, sample_mode="packed"), (1, 1, 0))
    assert isinstance(packed, GPTDataset)
    assert packed.document_range == train.document_range  # the same split of documents
    assert "sample_mode" not in packed.description  # packed caches keep their keys
    assert train.description["sample_mode"] == "document" and packed.cache.key != train.cache.key
    saved = json.loads(train.cache.description_path.read_text())
    assert saved["sample_mode"] == "document"

    again, _, _ = build_train_valid_test_datasets(config, (2 * chunks + 5, 1, 0), PAD0)  # loads, no rebuild
    assert isinstance(again, DocumentDataset)
    np.testing.assert_array_equal(again.shuffle_index, train.shuffle_index)


def test_splits_match_packed_mode(zh_text_document, tmp_path):
    prefix = zh_text_document["prefix"]
    for split in ("90,8,2", "98,2", "1,1,1"):
        document = build_train_valid_test_datasets(_config(prefix, tmp_path, split=split), (1, 1, 1), PAD0)
        packed = build_train_valid_test_datasets(
            _config(prefix, tmp_path, split=split, sample_mode="packed"), (1, 1, 1)
        )
        for d, p in zip(document, packed):
            assert (d is None) == (p is None)
            if d is not None and p is not None:
                assert isinstance(d, DocumentDataset) and d.document_range == p.document_range


def test_resume_serves_the_rest_of_the_same_order(zh_text_document, tmp_path):
    train, _, _ = build_train_valid_test_datasets(_config(zh_text_document["prefix"], tmp_path), (64, 1, 0), PAD0)
    assert train is not None

    def batches(consumed: int) -> list[torch.Tensor]:
        loader = build_pretraining_data_loader(train, consumed, 4, 1, 2)  # rank 1 of 2
        assert loader is not None
        return [batch["tokens"] for batch in loader][:6]

    full, resumed = batches(0), batches(16)
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a, b)


def test_blend_of_document_datasets(zh_text_document, tmp_path):
    rng = np.random.default_rng(3)
    other = write_corpus(tmp_path / "other_text_document", random_documents(rng, 400, max_length=120))
    blend = ["0.6", zh_text_document["prefix"], "0.4", other]
    config = _config(zh_text_document["prefix"], tmp_path, data_path=blend)
    train, _, _ = build_train_valid_test_datasets(config, (200, 10, 0), PAD0)
    assert isinstance(train, BlendedDataset) and len(train) == 200
    assert all(isinstance(part, DocumentDataset) for part in train.datasets)
    drawn = np.bincount(train.dataset_index, minlength=2)
    assert abs(drawn[0] / 200 - 0.6) < 0.01
    for i in range(0, 200, 7):
        sample = train[i]
        part = train.datasets[int(sample["dataset_id"])]
        assert isinstance(part, DocumentDataset)
        document, offset, _ = part.chunk(int(train.dataset_sample_index[i]))
        tokens, loss_mask = _expected_sample(part.indexed[document], offset, 32, 0)
        np.testing.assert_array_equal(sample["tokens"].numpy(), tokens)
        np.testing.assert_array_equal(sample["loss_mask"].numpy(), loss_mask)


def test_pad_token_comes_from_config_or_metadata(tmp_path):
    prefix = write_corpus(tmp_path / "bare_text_document", [np.arange(103, 160)])
    with pytest.raises(ConfigError, match="sample_mode 'document' pads with \\[PAD\\]: .*has no 'pad' entry"):
        build_train_valid_test_datasets(_config(prefix, tmp_path, split="1"), (1, 0, 0))
    with pytest.raises(ConfigError, match="sample_mode"):
        _config(prefix, tmp_path, sample_mode="lines")


def test_eod_mask_loss_applies_in_document_mode(tmp_path):
    prefix = write_corpus(tmp_path / "eod_text_document", [np.array([101, 200, 102, 300, 102])])
    config = _config(prefix, tmp_path, split="1", seq_length=8, eod_mask_loss=True)
    (train, _, _) = build_train_valid_test_datasets(config, (1, 0, 0), VocabIds(pad=0, eod=102))
    assert train is not None
    sample = train[0]
    assert sample["tokens"].tolist() == [101, 200, 102, 300, 102, 0, 0, 0, 0]
    assert sample["loss_mask"].tolist() == [1, 1, 0, 1, 0, 0, 0, 0]


def test_training_flag_reaches_the_datasets(zh_text_document, tmp_path):
    from training_runs import CPU_CONFIG

    from megatron_zh.training.config.arguments import build_parser, build_run_config
    from megatron_zh.training.loaders import build_datasets

    tokenizer = BertChineseTokenizer(zh_text_document["vocab"])
    argv = ["--ds_config", str(CPU_CONFIG), "--data-path", zh_text_document["prefix"]]
    argv += ["--vocab-file", zh_text_document["vocab"], "--data-cache-path", str(tmp_path), "--train-iters", "5"]
    for mode, kind in (("document", DocumentDataset), ("packed", GPTDataset)):
        run = build_run_config(build_parser().parse_args([*argv, "--sample-mode", mode]), world_size=2)
        train, valid = build_datasets(run, tokenizer.fingerprint, tokenizer.pad)
        assert isinstance(train, kind) and isinstance(valid, kind)
        assert len(train) >= 5 * run.global_batch_size
