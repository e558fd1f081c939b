"""Causal attention with dropout in PyTorch, a block of queries at a time: the CPU fallback that keeps no seq x seq.

`F.scaled_dot_product_attention` with dropout on CPU takes its math path, which keeps the whole
[batch, heads, seq, seq] probabilities and dropout mask for backward (for gpt2-distil at 4 x 1024, about
600 MB per layer, more than all other activations together). Here queries go through in blocks; a block of
queries [i0, i1) sees keys [0, i1) only (causal: the keys after the block are never computed), and the
forward keeps just the output and each row's log-sum-exp. Backward recomputes each block's probabilities
from those and redraws its dropout mask from the generator state saved at forward, so the masks are the
forward's. Dropout draws from PyTorch's default CPU generator in forward, as F.dropout does, so
`torch.manual_seed` and activation checkpointing (which restores the RNG state before recomputing)
reproduce it. The mask keeps a probability with chance 1 - p and scales the kept ones by 1 / (1 - p).

The op is a PyTorch custom op (torch.ops.megatron_zh.blockwise_attention*), opaque to torch.compile.
"""

from __future__ import annotations

from typing import Any

import torch

QUERY_BLOCK = 64  # rows of queries per block: a block's scores are [batch, heads, 64, <= seq] float32
_RNG_STATE_BYTES = torch.get_rng_state().numel()  # the CPU generator's state (Mersenne Twister)


def _blocks(seq: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, seq)) for start in range(0, seq, block)]


def _block_scores(q: torch.Tensor, k: torch.Tensor, start: int, end: int, scale: float) -> torch.Tensor:
    """scale * q[start:end] @ k[:end]^T in float32 (float64 for float64 inputs), -inf above the diagonal."""
    scores = torch.matmul(q[:, :, start:end], k[:, :, :end].transpose(-1, -2))
    scores = scores.to(_accumulation(q)).mul_(scale)
    rows = torch.arange(start, end, device=q.device)[:, None]
    cols = torch.arange(end, device=q.device)[None, :]
    return scores.masked_fill_(cols > rows, float("-inf"))


def _accumulation(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _keep_mask(shape: torch.Size, dropout_p: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator) >= dropout_p


@torch.library.custom_op("megatron_zh::blockwise_attention_fwd", mutates_args=())
def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float, block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out [b, h, s, d], log-sum-exp [b, h, s], the generator state the dropout masks came from)."""
    rng_state = torch.get_rng_state()
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], dtype=_accumulation(q), device=q.device)
    for start, end in _blocks(q.shape[2], block):
        scores = _block_scores(q, k, start, end, scale)
        lse[:, :, start:end] = torch.logsumexp(scores, dim=-1)
        probs = scores.sub_(lse[:, :, start:end, None]).exp_()
        if dropout_p > 0.0:
            probs.mul_(_keep_mask(probs.shape, dropout_p, None)).mul_(1.0 / (1.0 - dropout_p))
        out[:, :, start:end] = torch.matmul(probs.to(v.dtype), v[:, :, :end])
    return out, lse, rng_state


@_forward.register_fake
def _(q, k, v, scale, dropout_p, block):
    state = torch.empty(_RNG_STATE_BYTES, dtype=torch.uint8)
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=_accumulation(q)), state


@torch.library.custom_op("megatron_zh::blockwise_attention_bwd", mutates_args=())
def _backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    rng_state: torch.Tensor,
    scale: float,
    dropout_p: float,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator()
    generator.set_state(rng_state)  # the forward's masks, drawn again in the forward's order
    acc = _accumulation(q)
    grad_q = torch.empty_like(q, dtype=acc)
    grad_k = torch.zeros_like(k, dtype=acc)
    grad_v = torch.zeros_like(v, dtype=acc)
    # sum_j P_ij dP_ij = dO_i . O_i, with the dropout inside P (flash attention's D).
    row_dot = (grad_out.to(acc) * out.to(acc)).sum(-1)
    for start, end in _blocks(q.shape[2], block):
        probs = _block_scores(q, k, start, end, scale).sub_(lse[:, :, start:end, None]).exp_()
        grad_o = grad_out[:, :, start:end].to(acc)
        grad_probs = torch.matmul(grad_o, v[:, :, :end].to(acc).transpose(-1, -2))
        if dropout_p > 0.0:
            keep = _keep_mask(probs.shape, dropout_p, generator).to(acc).mul_(1.0 / (1.0 - dropout_p))
            grad_v[:, :, :end] += torch.matmul((probs * keep).transpose(-1, -2), grad_o)
            grad_probs.mul_(keep)
        else:
            grad_v[:, :, :end] += torch.matmul(probs.transpose(-1, -2), grad_o)
        grad_scores = probs.mul_(grad_probs.sub_(row_dot[:, :, start:end, None])).mul_(scale)
        grad_q[:, :, start:end] = torch.matmul(grad_scores, k[:, :, :end].to(acc))
        grad_k[:, :, :end] += torch.matmul(grad_scores.transpose(-1, -2), q[:, :, start:end].to(acc))
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)


@_backward.register_fake
def _(grad_out, q, k, v, out, lse, rng_state, scale, dropout_p, block):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    q, k, v, scale, dropout_p, block = inputs
    out, lse, rng_state = output
    ctx.save_for_backward(q, k, v, out, lse, rng_state)
    ctx.scale, ctx.dropout_p, ctx.block = scale, dropout_p, block


def _autograd(ctx: Any, grad_out: torch.Tensor, _grad_lse: Any, _grad_state: Any) -> tuple[Any, ...]:
    q, k, v, out, lse, rng_state = ctx.saved_tensors
    grads = _backward(grad_out, q, k, v, out, lse, rng_state, ctx.scale, ctx.dropout_p, ctx.block)
    return (*grads, None, None, None)


_forward.register_autograd(_autograd, setup_context=_setup_context)


def blockwise_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float, block: int = QUERY_BLOCK
) -> torch.Tensor:
    """softmax(scale * q @ k^T, causal), dropout_p applied to the probabilities, @ v, for [b, h, s, d] inputs."""
    return _forward(q, k, v, float(scale), float(dropout_p), int(block))[0]
