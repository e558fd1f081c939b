"""The Triton launchers as PyTorch custom ops: `torch.ops.megatron_zh.*`, each forward tied to its backward.

Each op is a `torch.library.custom_op` over the launcher in `megatron_zh.ops.kernels`, with a fake
(meta) implementation that gives the outputs' shapes, dtypes and strides, and a registered
autograd formula that calls the backward op. torch.compile therefore keeps them in its graph as
opaque calls, without a graph break and without tracing into the launcher (which it cannot do
under Triton's CPU interpreter, and need not do on a GPU).

Why `custom_op` and not `triton_op`: under the interpreter `triton_op` runs its body on fake
tensors, so its fake-tensor check, AOTAutograd and every compile backend fail there, and the CPU
tests could not exercise the path a GPU run takes. `custom_op` behaves the same on both.

The launchers are looked up when an op runs (`kernels.forward` on its module), so importing
`megatron_zh.ops` never imports Triton, and a test can replace a launcher to break a kernel.

The attention ops take their dropout seed as an int64 CPU scalar tensor, drawn by the caller from
PyTorch's CPU generator: the op stays a pure function of its inputs (what opcheck and AOTAutograd
assume) and torch.compile traces the draw instead of breaking on an `.item()`.
"""

from __future__ import annotations

import torch

# ----------------------------------------------------------------------------------------- layer norm


@torch.library.custom_op("megatron_zh::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y like x, mean float32 [rows], rstd float32 [rows]) over the last dim of x."""
    from megatron_zh.ops.kernels import layer_norm as kernels

    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    y, mean, rstd = kernels.forward(x2d, weight.contiguous(), bias.contiguous(), eps)
    return y.view(x.shape), mean, rstd


@layer_norm_fwd.register_fake
def _(x, weight, bias, eps):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    stats = x.new_empty((rows,), dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


@torch.library.custom_op("megatron_zh::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx like x, dweight and dbias like weight, in weight's dtype)."""
    from megatron_zh.ops.kernels import layer_norm as kernels

    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    dy2d = dy.reshape(x2d.shape).contiguous()
    dx, dweight, dbias = kernels.backward(dy2d, x2d, weight.contiguous(), mean, rstd)
    return dx.view(x.shape), dweight, dbias


@layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd):
    contiguous = torch.contiguous_format
    return (
        torch.empty_like(x, memory_format=contiguous),
        torch.empty_like(weight, memory_format=contiguous),
        torch.empty_like(weight, memory_format=contiguous),
    )


def _layer_norm_setup(ctx, inputs, output) -> None:
    x, weight, _, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, mean, rstd)


def _layer_norm_backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = layer_norm_bwd(dy, x, weight, mean, rstd)
    return dx, dweight, dbias, None


layer_norm_fwd.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup)

# ------------------------------------------------------------------------------------ causal softmax


@torch.library.custom_op("megatron_zh::scaled_causal_softmax_fwd", mutates_args=())
def scaled_causal_softmax_fwd(scores: torch.Tensor, scale: float) -> torch.Tensor:
    """Probabilities like scores (contiguous)."""
    from megatron_zh.ops.kernels import softmax as kernels

    return kernels.forward(scores.contiguous(), scale)


@scaled_causal_softmax_fwd.register_fake
def _(scores, scale):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


@torch.library.custom_op("megatron_zh::scaled_causal_softmax_bwd", mutates_args=())
def scaled_causal_softmax_bwd(probs: torch.Tensor, grad_probs: torch.Tensor, scale: float) -> torch.Tensor:
    """The gradient with respect to the scores, from the saved probabilities."""
    from megatron_zh.ops.kernels import softmax as kernels

    return kernels.backward(probs.contiguous(), grad_probs.contiguous(), scale)


@scaled_causal_softmax_bwd.register_fake
def _(probs, grad_probs, scale):
    return torch.empty_like(probs, memory_format=torch.contiguous_format)


def _softmax_setup(ctx, inputs, output) -> None:
    ctx.scale = inputs[1]
    ctx.save_for_backward(output)


def _softmax_backward(ctx, grad_probs):
    (probs,) = ctx.saved_tensors
    return scaled_causal_softmax_bwd(probs, grad_probs, ctx.scale), None


scaled_causal_softmax_fwd.register_autograd(_softmax_backward, setup_context=_softmax_setup)

# ------------------------------------------------------------------------------------ flash attention


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _bhsd_like(t: torch.Tensor) -> torch.Tensor:
    """The kernels' output layout: [b, h, s, d] viewed from a [b, s, h, d] buffer."""
    b, h, s, d = t.shape
    return t.new_empty((b, s, h, d)).transpose(1, 2)


def _seed(seed: torch.Tensor, dropout_p: float) -> int:
    return int(seed) if dropout_p > 0.0 else 0


@torch.library.custom_op("megatron_zh::causal_attention_fwd", mutates_args=())
def causal_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seed: torch.Tensor, scale: float, dropout_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [b, h, s, d] stored [b, s, h, d], lse float32 [b*h, s]); seed is ignored without dropout."""
    from megatron_zh.ops.kernels import attention as kernels

    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    return kernels.forward(q, k, v, scale, dropout_p, _seed(seed, dropout_p))


@causal_attention_fwd.register_fake
def _(q, k, v, seed, scale, dropout_p):
    b, h, s, _ = q.shape
    return _bhsd_like(q), q.new_empty((b * h, s), dtype=torch.float32)


@torch.library.custom_op("megatron_zh::causal_attention_bwd", mutates_args=())
def causal_attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    seed: torch.Tensor,
    scale: float,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each [b, h, s, d] stored [b, s, h, d]."""
    from megatron_zh.ops.kernels import attention as kernels

    grad_out, q, k, v, out = (_last_dim_contiguous(t) for t in (grad_out, q, k, v, out))
    return kernels.backward(grad_out, q, k, v, out, lse, scale, dropout_p, _seed(seed, dropout_p))


@causal_attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, seed, scale, dropout_p):
    return _bhsd_like(q), _bhsd_like(k), _bhsd_like(v)


def _attention_setup(ctx, inputs, output) -> None:
    q, k, v, seed, scale, dropout_p = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, seed)
    ctx.scale, ctx.dropout_p = scale, dropout_p


def _attention_backward(ctx, grad_out, _dlse):
    q, k, v, out, lse, seed = ctx.saved_tensors
    dq, dk, dv = causal_attention_bwd(grad_out, q, k, v, out, lse, seed, ctx.scale, ctx.dropout_p)
    return dq, dk, dv, None, None, None


causal_attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)
