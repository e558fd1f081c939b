"""Incremental forward pass of a `GPT2Model` with a key/value cache, for generation.

The model's own `forward` recomputes every position and the logits of every position; generating
n tokens that way costs O(n^2) work and a [batch, seq, vocab] logits tensor per token. This
decoder runs the same weights (the model's own submodules, nothing copied) one new token per row
at a time, keeping each layer's keys and values, and computes logits for the last position only.

Prompts of different lengths share a batch left-padded: padded columns are masked out of
attention and each row's positions count from its first real token, so a row's logits do not
depend on what else is in the batch. Dropout is skipped (inference). tests/test_generate.py
checks the logits against `GPT2Model.forward` on the same windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from megatron_zh.model import GPT2Model

# The fused kernels only pay off on long sequences; a step here is one token per row.
_NORM_BACKEND = "torch"


class CachedDecoder:
    """`prefill(windows)` then `step(next_ids)` repeatedly; each returns next-token logits [rows, vocab].

    `keep_rows(rows)` drops finished rows from the cache. A window must fit in the model's
    positions; what to do when a sequence outgrows them (slide the window and prefill again) is
    the caller's choice.
    """

    def __init__(self, model: GPT2Model, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        config = model.config
        self.max_positions = config.max_position_embeddings
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._valid = torch.zeros(0, 0, dtype=torch.bool)  # [rows, capacity]: real (not padding) columns
        self._next_position = torch.zeros(0, dtype=torch.long)  # [rows]: position of each row's next token
        self._columns = 0  # cache columns filled so far

    @property
    def device(self) -> torch.device:
        return self.model.embedding.word_embeddings.weight.device

    @property
    def free_columns(self) -> int:
        return self._valid.shape[1] - self._columns

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
        capacity = width + max(0, extra_columns)
        self._valid = torch.zeros(rows, capacity, dtype=torch.bool)
        self._valid[:, :width] = columns >= padding[:, None]
        # Causal and real keys only; a padding query may see itself so that its (unused) softmax
        # row is not empty.
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = (causal & self._valid[:, None, :width]) | torch.eye(width, dtype=torch.bool)
        shape = (rows, self.num_heads, capacity, self.head_dim)
        weight = self.model.embedding.word_embeddings.weight
        self._keys = [weight.new_empty(shape) for _ in self.model.layers]
        self._values = [weight.new_empty(shape) for _ in self.model.layers]
        self._columns = 0
        self._next_position = lengths.clone()
        self._valid = self._valid.to(self.device)
        return self._forward(ids.to(self.device), positions.to(self.device), mask[:, None].to(self.device))

    @torch.inference_mode()
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([rows]); returns the logits after it."""
        if self.free_columns < 1:
            raise RuntimeError("the key/value cache is full: prefill again with more extra_columns")
        if int(self._next_position.max()) >= self.max_positions:
            raise RuntimeError(f"a row reached position {self.max_positions}: slide its window and prefill again")
        self._valid[:, self._columns] = True
        mask = self._valid[:, None, None, : self._columns + 1]
        positions = self._next_position[:, None].to(self.device)
        logits = self._forward(next_ids.to(self.device, torch.long)[:, None], positions, mask)
        self._next_position += 1
        return logits

    @torch.inference_mode()
    def keep_rows(self, rows: Sequence[int]) -> None:
        """Keep only these rows (indices into the current rows), in this order."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        device_index = index.to(self.device)
        self._keys = [k.index_select(0, device_index) for k in self._keys]
        self._values = [v.index_select(0, device_index) for v in self._values]
        self._valid = self._valid.index_select(0, device_index)
        self._next_position = self._next_position.index_select(0, index)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """GPT2Model.forward for `ids` [rows, t] at `positions`, attending to the cache under `mask`."""
        model = self.model
        start, end = self._columns, self._columns + ids.shape[1]
        x = model.embedding.word_embeddings(ids) + model.embedding.position_embeddings(positions)
        for layer, keys, values in zip(model.layers, self._keys, self._values):
            x = x + self._attention(
                layer.self_attention, layer.input_layernorm(x, _NORM_BACKEND), keys, values, start, end, mask
            )
            x = x + layer.mlp(layer.post_attention_layernorm(x, _NORM_BACKEND))
        self._columns = end
        last = model.final_layernorm(x[:, -1], _NORM_BACKEND)
        return F.linear(last, model.embedding.word_embeddings.weight).float()

    def _attention(
        self,
        attention,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int,
        end: int,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        rows, t, hidden = x.shape
        qkv = attention.query_key_value(x).view(rows, t, 3, self.num_heads, self.head_dim)
        q, k, v = (part.transpose(1, 2) for part in qkv.unbind(dim=2))
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        context = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=mask)
        return attention.dense(context.transpose(1, 2).reshape(rows, t, hidden))
