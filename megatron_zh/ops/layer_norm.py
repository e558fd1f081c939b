"""Fused LayerNorm over the last dimension, with a fused backward for dx, dweight and dbias."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    return _LayerNorm.apply(x, weight, bias, float(eps))


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        from megatron_zh.ops.kernels import layer_norm as kernels

        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        y, mean, rstd = kernels.forward(x2d, weight.contiguous(), bias.contiguous(), eps)
        ctx.save_for_backward(x2d, weight, mean, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        from megatron_zh.ops.kernels import layer_norm as kernels

        x2d, weight, mean, rstd = ctx.saved_tensors
        dy2d = grad_y.reshape(x2d.shape).contiguous()
        dx, dweight, dbias = kernels.backward(dy2d, x2d, weight.contiguous(), mean, rstd)
        return dx.view(grad_y.shape), dweight, dbias, None
