"""Document samples (`sample_mode: "document"`): each document cut on its own, as UER-py's LmDataset cuts it.

UER-py's GPT-2 recipe reads one document per line, framed `[CLS] tokens [SEP]` (what
tools/preprocess_data.py writes by default), and cuts it into consecutive, non-overlapping chunks
of `seq_length + 1` tokens: chunk j covers tokens [j * (seq_length + 1), (j + 1) * (seq_length + 1))
of the document. The last, partial chunk is kept and padded with [PAD]; nothing crosses a document
boundary (UER-py uer/utils/data.py, LmDataset.worker, `instances_num = len(document) //
(seq_length + 1)` full chunks then the padded rest). Megatron's packed windows (gpt_dataset.py)
instead read across documents and overlap by one token.

Labels at padded positions get loss_mask 0. UER-py counts one more position of a short chunk (its
`seg` covers `len(src)` inputs, so the last real token's [PAD] label is scored); here no [PAD]
label is ever scored.

The indices, built once and cached like the packed ones (index_cache.py):
* chunk index, int32 [chunks, 2]: (document id, token offset) of every chunk of the split's
  documents, in document order (C++, `helpers.build_document_chunk_idx`);
* shuffle index [epochs * chunks]: sample i reads chunk shuffle_index[i]; each epoch's block is its
  own seeded permutation of all chunks, so every epoch serves every document token exactly once.
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
from megatron_zh.data.indexed.dataset import IndexedDataset
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.log import get_logger
from megatron_zh.validators import NON_NEGATIVE_INT, POSITIVE_INT, optional

logger = get_logger(__name__)


def build_document_indices(
    sequence_lengths: np.ndarray, begin: int, end: int, num_samples: int | None, seq_length: int, seed: int
) -> dict[str, np.ndarray]:
    """The chunk and shuffle indices of documents [begin, end): enough epochs for num_samples (None: one)."""
    chunk_index = helpers.build_document_chunk_idx(sequence_lengths, begin, end, seq_length + 1)
    chunks = chunk_index.shape[0]
    num_epochs = 1 if num_samples is None else max(1, -(-num_samples // chunks))
    dtype = np.int64 if chunks >= np.iinfo(np.uint32).max else np.uint32
    rng = np.random.RandomState(seed)
    shuffle_index = np.empty(num_epochs * chunks, dtype=dtype)
    for epoch in shuffle_index.reshape(num_epochs, chunks):
        # One permutation per epoch, not one over all epochs: a chunk never comes twice before
        # every other chunk has come once, as when UER-py reads its dataset file epoch after epoch.
        epoch[:] = np.arange(chunks, dtype=dtype)
        rng.shuffle(epoch)
    logger.info(
        "documents [%d, %d): %d chunks of up to %d tokens, %d epoch(s)", begin, end, chunks, seq_length + 1, num_epochs
    )
    return {"chunk_index": chunk_index, "shuffle_index": shuffle_index}


class DocumentDataset(MappedIndices, torch.utils.data.Dataset):
    """Samples `dict(tokens, input_ids, labels, loss_mask)`, one document chunk each, from documents [begin, end).

    `num_samples` is the least number of samples wanted (whole epochs are added until it is met);
    None means one epoch. Same sample fields as GPTDataset, so the loaders, blends and loss take either.
    """

    chunk_index: np.ndarray  # int32 [chunks, 2]: (document id, token offset)
    shuffle_index: np.ndarray  # uint32 or int64 [epochs * chunks]: the chunk served as each sample

    def __init__(
        self,
        indexed: IndexedDataset,
        split: str,
        document_range: tuple[int, int],
        num_samples: int | None,
        config: DatasetConfig,
        cache_dir: str | os.PathLike[str],
        pad_token: int,
        eod_token: int | None = None,
    ) -> None:
        seq_length, seed = config.seq_length, config.seed
        begin, end = document_range
        optional(POSITIVE_INT)("num_samples", num_samples)
        NON_NEGATIVE_INT("pad_token", pad_token)
        if not 0 <= begin <= end <= len(indexed):
            raise ConfigError(
                f"document range [{begin}, {end}) is outside the {len(indexed)} documents of {indexed.path_prefix}"
            )
        lengths = indexed.sequence_lengths
        if not np.any(lengths[begin:end] > 0):
            raise DataFormatError(
                f"the {split} split of {indexed.path_prefix} (documents [{begin}, {end}) of {len(indexed)}) "
                "holds no tokens; give it a larger share or add data"
            )
        self.indexed = indexed
        self.split = split
        self.document_range = (begin, end)
        self.num_samples = num_samples
        self.seq_length = seq_length
        self.pad_token = pad_token
        self.eod_token = eod_token  # None: eod_mask_loss is off
        self.description = {
            "class": "DocumentDataset",
            "sample_mode": "document",
            "format_version": INDEX_FORMAT_VERSION,
            "sequence_lengths": array_digest(lengths),  # as GPTDataset: the lengths, not the path, name it
            "num_sequences": int(len(lengths)),
            "document_range": [begin, end],
            "num_samples": num_samples,
            "seq_length": seq_length,
            "seed": seed,
        }
        self.cache = IndexCache(
            Path(cache_dir), f"DocumentDataset-{split}", self.description, ("chunk_index", "shuffle_index")
        )
        arrays = load_or_build(
            self.cache, lambda: build_document_indices(lengths, begin, end, num_samples, seq_length, seed)
        )
        self.attach(arrays)
        self._check_indices()

    def attach(self, arrays: dict[str, np.ndarray]) -> None:
        self.chunk_index = arrays["chunk_index"]
        self.shuffle_index = arrays["shuffle_index"]

    def _check_indices(self) -> None:
        chunks = self.chunk_index.shape[0]
        if (
            self.chunk_index.ndim != 2
            or self.chunk_index.shape[1] != 2
            or self.shuffle_index.ndim != 1
            or chunks == 0
            or len(self.shuffle_index) % chunks != 0
            or (self.num_samples is not None and len(self.shuffle_index) < self.num_samples)
        ):
            raise DataFormatError(
                f"index cache {self.cache.description_path} holds inconsistent arrays (chunk index "
                f"{self.chunk_index.shape}, shuffle index {self.shuffle_index.shape}); delete its files to rebuild them"
            )

    @property
    def chunks_per_epoch(self) -> int:
        return int(self.chunk_index.shape[0])

    def __len__(self) -> int:
        return int(self.shuffle_index.shape[0])

    def chunk(self, idx: int) -> tuple[int, int, np.ndarray]:
        """(document id, offset, its 1 to seq_length + 1 tokens as int64) of sample `idx`."""
        if not -len(self) <= idx < len(self):
            raise IndexError(f"sample {idx} is out of range for a dataset of {len(self)} samples")
        document, offset = self.chunk_index[int(self.shuffle_index[idx])].tolist()
        length = min(self.seq_length + 1, int(self.indexed.sequence_lengths[document]) - offset)
        if length < 1:
            raise DataFormatError(
                f"sample {idx} of {self.indexed.path_prefix} starts past the end of document {document}: "
                "the .bin/.idx changed after its index cache was built"
            )
        return document, offset, self.indexed.get(document, offset, length).astype(np.int64)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        """int64 `tokens` [seq + 1] ([PAD] after the chunk), `input_ids` / `labels` [seq], float32 `loss_mask` [seq]."""
        _, _, real = self.chunk(idx)
        tokens = torch.full((self.seq_length + 1,), self.pad_token, dtype=torch.int64)
        tokens[: len(real)] = torch.from_numpy(real)
        input_ids = tokens[:-1]
        loss_mask = torch.ones(self.seq_length, dtype=torch.float32)
        # Label i is token i + 1: those past the chunk's last real token are [PAD], never scored.
        loss_mask[len(real) - 1 :] = 0.0
        if self.eod_token is not None:
            loss_mask[input_ids == self.eod_token] = 0.0  # Megatron's eod_mask_loss rule, as in packed mode
        return {"tokens": tokens, "input_ids": input_ids, "labels": tokens[1:], "loss_mask": loss_mask}
