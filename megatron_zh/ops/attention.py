"""Fused causal self-attention, flash-attention style (no seq x seq matrix in memory).

The Triton path is the custom ops `megatron_zh::causal_attention_fwd` / `_bwd` (custom_ops.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from megatron_zh.ops import custom_ops
from megatron_zh.ops.blockwise_attention import blockwise_causal_attention
from megatron_zh.ops.dispatch import Backend, resolve_backend


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    dropout_p: float = 0.0,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """softmax(scale * q @ k^T, causal) @ v for [batch, heads, seq, head_dim] inputs.

    scale defaults to 1/sqrt(head_dim). dropout_p drops attention probabilities (pass 0.0 in
    eval, as with `F.scaled_dot_product_attention`); the Triton kernel draws its Philox seed
    from PyTorch's CPU generator, so `torch.manual_seed` and activation checkpointing
    reproduce its masks. Inputs may be strided views (e.g. heads split off a fused QKV
    projection) as long as the last dim is contiguous; the Triton output is a [b, h, s, d] view
    of a [b, s, h, d] buffer, so merging the heads back costs no copy.
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"causal_attention: q, k, v must share one [batch, heads, seq, head_dim] shape, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"causal_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"causal_attention: dropout_p must be in [0, 1), got {dropout_p}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if resolve_backend(backend, "causal_attention", q, k, v) == "torch":
        if dropout_p > 0.0 and q.device.type == "cpu":
            # SDPA's CPU math path would keep the seq x seq probabilities and mask of every layer.
            return blockwise_causal_attention(q, k, v, scale, dropout_p)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    # The seed is drawn from PyTorch's CPU generator, as a tensor: see custom_ops.py.
    if dropout_p > 0.0:
        seed = torch.randint(0, 2**31 - 1, (), dtype=torch.int64)
    else:
        seed = torch.zeros((), dtype=torch.int64)
    out, _ = custom_ops.causal_attention_fwd(q, k, v, seed, scale, float(dropout_p))
    return out
