"""Decoding bookkeeping around `GPT2Model.forward` with a key/value cache, for generation.

The model's plain forward recomputes every position and the logits of every position; generating
n tokens that way costs O(n^2) work and a [batch, seq, vocab] logits tensor per token. Here the
model runs with a `KVCache`: one new token per row at a time, the logits of the last position only.

Prompts of different lengths share a batch left-padded: padded columns are masked out of
attention and each row's positions count from its first real token, so a row's logits do not
depend on what else is in the batch. Dropout is off (inference). tests/test_generate.py checks
the logits against `GPT2Model.forward` on the same windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_zh.model import GPT2Model, KVCache


class CachedDecoder:
    """`prefill(windows)` then `step(next_ids)` repeatedly; each returns next-token logits [rows, vocab].

    `keep_rows(rows)` drops finished rows from the cache. A window must fit in the model's
    positions; what to do when a sequence outgrows them (slide the window and prefill again) is
    the caller's choice.
    """

    def __init__(self, model: GPT2Model, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.max_positions = model.config.max_position_embeddings
        self.cache: KVCache | None = None
        self._next_position = torch.zeros(0, dtype=torch.long)  # [rows]: position of each row's next token

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def free_columns(self) -> int:
        return 0 if self.cache is None else self.cache.capacity - self.cache.length

    @torch.inference_mode()
    def prefill(self, windows: Sequence[Sequence[int]], extra_columns: int) -> torch.Tensor:
        """Start over with one window of token ids per row (each 1..max_positions long), leaving
        room for `extra_columns` later steps. Returns the logits after each window's last token."""
        lengths = torch.tensor([len(w) for w in windows], dtype=torch.long)
        if len(windows) == 0 or int(lengths.min()) < 1 or int(lengths.max()) > self.max_positions:
            raise ValueError(f"prefill needs 1..{self.max_positions} tokens per row, got lengths {lengths.tolist()}")
        rows, width = len(windows), int(lengths.max())
        padding = width - lengths
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        for row, window in enumerate(windows):
            ids[row, int(padding[row]) :] = torch.as_tensor(list(window), dtype=torch.long)
        columns = torch.arange(width)
        positions = (columns - padding[:, None]).clamp_min(0)
        weight = next(self.model.parameters())
        capacity = width + max(0, extra_columns)
        self.cache = KVCache.allocate(self.model.config, rows, capacity, dtype=weight.dtype, device=weight.device)
        self.cache.real[:, :width] = (columns >= padding[:, None]).to(weight.device)
        self._next_position = lengths.clone()
        return self._forward(ids, positions)

    @torch.inference_mode()
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([rows]); returns the logits after it."""
        if self.cache is None or self.free_columns < 1:
            raise RuntimeError("the key/value cache is full: prefill again with more extra_columns")
        if int(self._next_position.max()) >= self.max_positions:
            raise RuntimeError(f"a row reached position {self.max_positions}: slide its window and prefill again")
        logits = self._forward(next_ids.to(torch.long)[:, None], self._next_position[:, None])
        self._next_position += 1
        return logits

    @torch.inference_mode()
    def keep_rows(self, rows: Sequence[int]) -> None:
        """Keep only these rows (indices into the current rows), in this order."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        if self.cache is not None:
            self.cache.keep_rows(index)
        self._next_position = self._next_position.index_select(0, index)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Float32 logits after the last of `ids` [rows, t] at `positions`, through the cache."""
        model = self.model
        if model.training:
            # Decoding is inference whatever mode the caller left the model in: no dropout.
            model.eval()
            try:
                return self._forward(ids, positions)
            finally:
                model.train()
        device = self.device
        output = model(ids.to(device), positions=positions.to(device), cache=self.cache, last_only=True)
        return output.logits[:, -1].float()
