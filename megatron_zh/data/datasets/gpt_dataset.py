"""GPTDataset: fixed-length training windows cut from a tokenized corpus, as Megatron builds them.

The documents of one split are listed `num_epochs` times in a seeded random order (the
*document index*), concatenated into one token stream and cut into windows of `seq_length + 1`
tokens that overlap by one token (the *sample index*, built in C++), which are then visited in a
seeded random order (the *shuffle index*). When the last epoch is needed only in part (below 80%
of an epoch), it is shuffled separately so that its documents do not crowd out whole epochs.
All three indices match megatron-core's GPTDataset for the same documents, seed and sizes.

Only the `.idx` (document lengths) is read to build the indices, through a memory map; the token
file is opened but not read until samples are drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from megatron_zh.data.datasets import helpers
from megatron_zh.data.datasets.config import DatasetConfig
from megatron_zh.data.datasets.index_cache import (
    INDEX_FORMAT_VERSION,
    IndexCache,
    MappedIndices,
    array_digest,
    load_or_build,
)
from megatron_zh.data.datasets.splits import SPLIT_NAMES
from megatron_zh.data.indexed.dataset import (
    IndexedDataset,
)
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.log import get_logger
from megatron_zh.validators import (
    POSITIVE_INT,
    one_of,
    optional,
)

logger = get_logger(__name__)

# Megatron's rule: a final epoch needed for less than this share of its samples is shuffled apart.
SEPARATE_FINAL_EPOCH_THRESHOLD = 0.80


def _num_epochs(tokens_per_epoch: int, num_samples: int | None, seq_length: int) -> int:
    """Fewest whole epochs whose tokens cover num_samples windows of seq_length + 1 tokens."""
    if num_samples is None:
        return 1
    tokens_needed = num_samples * seq_length + 1
    return max(1, -(-tokens_needed // tokens_per_epoch))


def _document_index(
    begin: int, end: int, num_epochs: int, rng: np.random.RandomState, separate_final_epoch: bool
) -> np.ndarray:
    """Documents [begin, end) once per epoch, shuffled; the final epoch shuffled on its own if separate.

    Filled and shuffled in place: the peak memory is the index itself (4 bytes per entry).
    """
    count = end - begin
    index = np.empty(num_epochs * count, dtype=np.int32)
    index.reshape(num_epochs, count)[:] = np.arange(begin, end, dtype=np.int32)
    if separate_final_epoch and num_epochs > 1:
        rng.shuffle(index[:-count])
        rng.shuffle(index[-count:])
    else:
        rng.shuffle(index)
    return index


def _shuffle_index(num_first: int, total: int, rng: np.random.RandomState) -> np.ndarray:
    """A permutation of [0, total) that shuffles [0, num_first) and [num_first, total) apart."""
    dtype = np.int64 if total >= np.iinfo(np.uint32).max - 1 else np.uint32
    first = np.arange(num_first, dtype=dtype)
    rng.shuffle(first)
    if num_first == total:
        return first
    rest = np.arange(num_first, total, dtype=dtype)
    rng.shuffle(rest)
    return np.concatenate((first, rest))


def build_gpt_indices(
    sequence_lengths: np.ndarray,
    begin: int,
    end: int,
    num_samples: int | None,
    seq_length: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """The document, sample and shuffle indices for documents [begin, end), as megatron-core builds them."""
    tokens_per_epoch = int(np.sum(sequence_lengths[begin:end], dtype=np.int64))
    num_epochs = _num_epochs(tokens_per_epoch, num_samples, seq_length)
    separate_final_epoch = False
    if num_epochs > 1:
        assert num_samples is not None  # one epoch is all that None asks for
        samples_before_final_epoch = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
        samples_from_final_epoch = num_samples - samples_before_final_epoch
        samples_per_epoch = (tokens_per_epoch - 1) // seq_length
        assert 0 <= samples_from_final_epoch <= samples_per_epoch + 1
        separate_final_epoch = samples_from_final_epoch < int(SEPARATE_FINAL_EPOCH_THRESHOLD * samples_per_epoch)

    rng = np.random.RandomState(seed)
    document_index = _document_index(begin, end, num_epochs, rng, separate_final_epoch)
    sample_index = helpers.build_sample_idx(
        sequence_lengths, document_index, seq_length, num_epochs, tokens_per_epoch, True, True
    )
    num_built = sample_index.shape[0] - 1
    shuffled_first = samples_before_final_epoch if separate_final_epoch else num_built
    shuffle_index = _shuffle_index(shuffled_first, num_built, rng)
    logger.info(
        "documents [%d, %d): %d tokens/epoch, %d epoch(s)%s, %d samples of %d tokens",
        begin,
        end,
        tokens_per_epoch,
        num_epochs,
        " (final epoch shuffled apart)" if separate_final_epoch else "",
        num_built,
        seq_length + 1,
    )
    return {"document_index": document_index, "sample_index": sample_index, "shuffle_index": shuffle_index}


class GPTDataset(MappedIndices, torch.utils.data.Dataset):
    """Samples `dict(tokens, input_ids, labels, loss_mask)` from documents [begin, end) of a corpus.

    `num_samples` is the least number of samples wanted (epochs are added until it is met);
    None means one epoch. `len(dataset)` may exceed it by up to an epoch's tail.
    """

    document_index: np.ndarray  # int32 [documents x epochs]: document ids in reading order
    sample_index: np.ndarray  # int32 or int64 [samples + 1, 2]: (document_index position, offset)
    shuffle_index: np.ndarray  # uint32 or int64 [samples]: the order samples are served in

    def __init__(
        self,
        indexed: IndexedDataset,
        split: str,
        document_range: tuple[int, int],
        num_samples: int | None,
        config: DatasetConfig,
        cache_dir: str | os.PathLike[str],
        eod_token: int | None = None,
    ) -> None:
        begin, end = document_range
        one_of(SPLIT_NAMES)("split", split)
        optional(POSITIVE_INT)("num_samples", num_samples)
        if not 0 <= begin <= end <= len(indexed):
            raise ConfigError(
                f"document range [{begin}, {end}) is outside the {len(indexed)} documents of {indexed.path_prefix}"
            )
        if config.eod_mask_loss and eod_token is None:
            raise ConfigError("eod_mask_loss is set but no eod_token was given")
        self.indexed = indexed
        self.split = split
        self.document_range = (begin, end)
        self.num_samples = num_samples
        self.seq_length = config.seq_length
        self.eod_mask_loss = config.eod_mask_loss
        self.eod_token = eod_token

        lengths = indexed.sequence_lengths
        if int(np.sum(lengths[begin:end], dtype=np.int64)) < 2:
            raise DataFormatError(
                f"the {split} split of {indexed.path_prefix} (documents [{begin}, {end}) of {len(indexed)}, "
                f"split {config.split!r}) holds fewer than 2 tokens; give it a larger share or add data"
            )
        self.description = {
            "class": "GPTDataset",
            "format_version": INDEX_FORMAT_VERSION,
            # The indices depend on the document lengths only, so the lengths' digest (not the
            # path or mtime) names the dataset: a copied or moved corpus keeps its cache, and
            # ranks that mount the data at different paths agree on the key.
            "sequence_lengths": array_digest(lengths),
            "num_sequences": int(len(lengths)),
            "document_range": [begin, end],
            "num_samples": num_samples,
            "seq_length": config.seq_length,
            "seed": config.seed,
            "add_extra_token": True,
            "separate_final_epoch_threshold": SEPARATE_FINAL_EPOCH_THRESHOLD,
        }
        cache = IndexCache(
            Path(cache_dir),
            f"GPTDataset-{split}",
            self.description,
            ("document_index", "sample_index", "shuffle_index"),
        )
        self.cache = cache
        arrays = load_or_build(
            cache, lambda: build_gpt_indices(lengths, begin, end, num_samples, config.seq_length, config.seed)
        )
        self.attach(arrays)
        self._check_indices()

    def attach(self, arrays: dict[str, np.ndarray]) -> None:
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]

    def _check_indices(self) -> None:
        rows = self.sample_index.shape[0] - 1
        if (
            self.sample_index.ndim != 2
            or self.sample_index.shape[1] != 2
            or self.shuffle_index.shape != (rows,)
            or (self.num_samples is not None and rows < self.num_samples)
        ):
            raise DataFormatError(
                f"index cache {self.cache.description_path} holds inconsistent arrays "
                f"(sample index {self.sample_index.shape}, shuffle index {self.shuffle_index.shape}); "
                "delete its files to rebuild them"
            )

    def __len__(self) -> int:
        return self.sample_index.shape[0] - 1

    def tokens(self, idx: int) -> np.ndarray:
        """The seq_length + 1 tokens of sample `idx` (int64)."""
        if not -len(self) <= idx < len(self):
            raise IndexError(f"sample {idx} is out of range for a dataset of {len(self)} samples")
        row = int(self.shuffle_index[idx])
        (first, first_offset), (last, last_offset) = self.sample_index[row : row + 2].tolist()
        if first == last:
            document = int(self.document_index[first])
            return self.indexed.get(document, first_offset, last_offset - first_offset + 1).astype(np.int64)
        parts = [self.indexed.get(int(self.document_index[first]), first_offset)]
        parts += [self.indexed.get(int(self.document_index[i])) for i in range(first + 1, last)]
        parts.append(self.indexed.get(int(self.document_index[last]), 0, last_offset + 1))
        return np.concatenate(parts, dtype=np.int64)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        """int64 `tokens` [seq + 1], `input_ids` / `labels` [seq] (views of it), float32 `loss_mask` [seq]."""
        window = self.tokens(idx)
        if window.shape[0] != self.seq_length + 1:
            raise DataFormatError(
                f"sample {idx} of {self.indexed.path_prefix} has {window.shape[0]} tokens instead of "
                f"{self.seq_length + 1}: the .bin/.idx changed after its index cache was built"
            )
        # Tensors rather than numpy arrays: the DataLoader then collates about 20% faster.
        tokens = torch.from_numpy(window)
        input_ids = tokens[:-1]
        loss_mask = torch.ones(self.seq_length, dtype=torch.float32)
        if self.eod_mask_loss:
            # Megatron's rule: no loss where the input is end-of-document (the next document's first token).
            loss_mask[input_ids == self.eod_token] = 0.0
        return {"tokens": tokens, "input_ids": input_ids, "labels": tokens[1:], "loss_mask": loss_mask}
