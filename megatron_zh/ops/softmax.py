"""Fused scale + causal mask + softmax (Megatron's "upper triangular masked softmax").

The Triton path is the custom ops `megatron_zh::scaled_causal_softmax_fwd` / `_bwd` (custom_ops.py).
"""

from __future__ import annotations

import torch

from megatron_zh.ops import custom_ops
from megatron_zh.ops.dispatch import Backend, resolve_backend


def scaled_causal_softmax(scores: torch.Tensor, scale: float, *, backend: Backend = "auto") -> torch.Tensor:
    """softmax(scale * scores) over the last dim, each query blind to the keys after it.

    scores: [batch, heads, seq_q, seq_k] (any leading dims); key j is masked for query i when
    j > i (top-left aligned, as `torch.tril`). Accumulates in float32 for 16-bit inputs and
    returns the input dtype. The Triton kernel reads each row once and handles rows of up to
    16384 keys, any length.
    """
    if scores.dim() < 2:
        raise ValueError(
            f"scaled_causal_softmax: scores need at least 2 dims [.., seq_q, seq_k], got {tuple(scores.shape)}"
        )
    if resolve_backend(backend, "scaled_causal_softmax", scores) == "torch":
        return _torch_scaled_causal_softmax(scores, scale)
    return custom_ops.scaled_causal_softmax_fwd(scores, float(scale))


def _torch_scaled_causal_softmax(scores: torch.Tensor, scale: float) -> torch.Tensor:
    seq_q, seq_k = scores.shape[-2:]
    future = torch.ones(seq_q, seq_k, dtype=torch.bool, device=scores.device).triu(1)
    logits = (scores.float() * scale).masked_fill(future, float("-inf"))
    return torch.softmax(logits, dim=-1).to(scores.dtype)
