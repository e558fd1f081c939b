"""Keys and values kept between forward passes, so that decoding feeds only the new tokens.

    cache = KVCache.allocate(model.config, rows, capacity, dtype=torch.float32, device="cpu")
    cache.real[:, :t] = ids != pad  # mark left padding (every column is real until marked)
    logits = model(ids, positions=positions, cache=cache, last_only=True).logits

Column j of a row holds the key/value of the j-th token that row was fed, padding included:
rows of different lengths share a batch left-padded, and `real` keeps padding out of attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megatron_zh.model.config import GPT2Config


@dataclass
class KVCache:
    keys: list[torch.Tensor]  # per layer [rows, heads, capacity, head_dim]
    values: list[torch.Tensor]  # per layer [rows, heads, capacity, head_dim]
    real: torch.Tensor  # [rows, capacity] bool: False for the columns of left padding
    length: int = 0  # columns filled by earlier forward passes
    mask: torch.Tensor | None = None  # the current pass's [rows, 1, new, length + new] attention mask

    @classmethod
    def allocate(
        cls, config: GPT2Config, rows: int, capacity: int, *, dtype: torch.dtype, device: torch.device | str
    ) -> KVCache:
        # Preallocated once: growing by torch.cat would copy the whole cache at every token.
        shape = (rows, config.num_attention_heads, capacity, config.head_dim)
        keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        return cls(keys, values, torch.ones(rows, capacity, dtype=torch.bool, device=device))

    @property
    def capacity(self) -> int:
        return self.real.shape[1]

    def begin(self, new: int) -> None:
        """Make room for `new` columns and build the mask every layer of this pass attends with."""
        start, end = self.length, self.length + new
        if end > self.capacity:
            raise RuntimeError(f"the key/value cache holds {self.capacity} columns; {end} were needed")
        if new == 1:
            # One new token per row, the common decoding step: causality constrains nothing and,
            # padding only ever preceding a row's tokens, the new column is real. A view: no work.
            self.mask = self.real[:, None, None, :end]
            return
        query = torch.arange(start, end, device=self.real.device)[:, None]
        key = torch.arange(end, device=self.real.device)
        # Causal over real keys; a padding query also sees itself so that its (unused) softmax
        # row is not empty, which would make NaNs.
        mask = ((key <= query) & self.real[:, None, :end]) | (key == query)
        self.mask = mask[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this pass's k, v [rows, heads, new, head_dim]; return every filled column's keys and values."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def end(self, new: int) -> None:
        self.length += new
        self.mask = None

    def keep_rows(self, rows: Sequence[int] | torch.Tensor) -> None:
        """Keep only these rows, in this order (e.g. dropping finished sequences)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.real.device)
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.real = self.real.index_select(0, index)
