"""Shared by the dataset tests: real .bin/.idx corpora on disk and megatron-core's datasets over them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from megatron_zh.data.indexed.builder import IndexedDatasetBuilder

EOD = 102  # [SEP] in the BERT-Chinese vocab
VOCAB_SIZE = 21128


def random_documents(rng: np.random.Generator, count: int, max_length: int = 300) -> list[np.ndarray]:
    """Documents of random tokens ending in EOD: many of length 1 (just EOD), some longer than a sequence."""
    documents = []
    for _ in range(count):
        length = 1 if rng.random() < 0.1 else int(rng.integers(2, max_length + 1))
        tokens = rng.integers(103, VOCAB_SIZE, length).astype(np.int64)
        tokens[-1] = EOD
        documents.append(tokens)
    return documents


def write_corpus(prefix: str | Path, documents) -> str:
    builder = IndexedDatasetBuilder(str(prefix), dtype=np.uint16)
    for document in documents:
        builder.add_document(np.asarray(document, dtype=np.int64))
    builder.finalize()
    return str(prefix)


class _MegatronTokenizer:
    """What megatron-core's GPTDataset reads from its tokenizer."""

    vocab_size = VOCAB_SIZE
    eod = EOD
    pad = 0
    special_tokens_dict: dict = {}
    unique_identifiers = {"class": "test-tokenizer"}


def megatron_datasets(blend, split: str, sizes, seq_length: int, seed: int, cache_dir: Path | None):
    """megatron-core's own train/valid/test datasets (GPTDataset or BlendedDataset) for `blend`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

        config = GPTDatasetConfig(
            random_seed=seed,
            sequence_length=seq_length,
            blend=blend,
            split=split,
            tokenizer=_MegatronTokenizer(),
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=False,
            # megatron-core's BlendedDataset asks torch.distributed for the rank when it caches, so
            # blends are built uncached here (no process group in a unit test).
            path_to_cache=None if cache_dir is None else str(cache_dir),
        )
        return BlendedMegatronDatasetBuilder(GPTDataset, list(sizes), lambda: True, config).build()


def assert_same_indices(ours, theirs) -> None:
    """Our GPTDataset's document/sample/shuffle indices equal megatron-core's, dtype included."""
    assert ours.document_range == (int(theirs.indices[0]), int(theirs.indices[-1]) + 1)
    for name in ("document_index", "sample_index", "shuffle_index"):
        mine, reference = np.asarray(getattr(ours, name)), np.asarray(getattr(theirs, name))
        assert mine.dtype == reference.dtype, name
        np.testing.assert_array_equal(mine, reference, err_msg=name)
