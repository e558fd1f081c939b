"""Fused LayerNorm over the last dimension, with a fused backward for dx, dweight and dbias.

The Triton path is the custom ops `megatron_zh::layer_norm_fwd` / `_bwd` (custom_ops.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_zh.ops import custom_ops
from megatron_zh.ops.dispatch import Backend, resolve_backend


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5, *, backend: Backend = "auto"
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim, statistics in float32.

    Same result as `F.layer_norm(x, x.shape[-1:], weight, bias, eps)`. The output has x's dtype;
    weight and bias may have another (e.g. float32 master weights) and get gradients in theirs.
    """
    hidden = x.shape[-1]
    if weight.shape != (hidden,) or bias.shape != (hidden,):
        raise ValueError(
            f"layer_norm: weight and bias must have shape ({hidden},), "
            f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    if resolve_backend(backend, "layer_norm", x, weight, bias) == "torch":
        return F.layer_norm(x, (hidden,), weight, bias, eps)
    y, _, _ = custom_ops.layer_norm_fwd(x, weight, bias, float(eps))
    return y
