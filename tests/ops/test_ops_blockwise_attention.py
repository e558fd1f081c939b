"""The CPU fallback for causal attention with dropout: a block of queries at a time, backward recomputed with the
forward's dropout masks, against float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_zh.ops import causal_attention
from megatron_zh.ops.blockwise_attention import _forward, blockwise_causal_attention


def make_inputs(shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=gen).to(dtype).requires_grad_() for _ in range(3))


def out_and_grads(fn, q, k, v, grad):
    out = fn(q, k, v)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), grad))


def masks_in_draw_order(shape, dropout_p: float, block: int, seed: int) -> torch.Tensor:
    """The keep mask the op draws: torch.rand per block of queries over the keys up to the block's end, in block
    order, from the default generator; assembled into one [b, h, s, s] mask (entries above the diagonal unused)."""
    batch, heads, seq, _ = shape
    torch.manual_seed(seed)
    keep = torch.zeros(batch, heads, seq, seq, dtype=torch.bool)
    for start in range(0, seq, block):
        end = min(start + block, seq)
        keep[:, :, start:end, :end] = torch.rand(batch, heads, end - start, end) >= dropout_p
    return keep


def reference(q, k, v, scale, keep=None, dropout_p=0.0):
    seq = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf")), -1)
    if keep is not None:
        probs = probs * keep / (1.0 - dropout_p)
    return probs @ v


@pytest.mark.parametrize("shape, block", [((2, 3, 37, 16), 8), ((1, 2, 64, 8), 64), ((1, 2, 5, 8), 64)])
def test_without_dropout_it_is_scaled_dot_product_attention(shape, block):
    q, k, v = make_inputs(shape)
    grad = torch.randn(shape, dtype=torch.float64)
    scale = shape[-1] ** -0.5
    ours = out_and_grads(lambda *t: blockwise_causal_attention(*t, scale, 0.0, block), q, k, v, grad)
    sdpa = out_and_grads(lambda *t: F.scaled_dot_product_attention(*t, is_causal=True), q, k, v, grad)
    for mine, theirs in zip(ours, sdpa):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block", [4, 16, 64])
def test_with_dropout_forward_and_backward_use_the_same_masks(block):
    shape, scale, dropout_p, seed = (2, 2, 23, 8), 0.3, 0.25, 11
    q, k, v = make_inputs(shape, seed=1)
    grad = torch.randn(shape, dtype=torch.float64)
    keep = masks_in_draw_order(shape, dropout_p, block, seed)
    torch.manual_seed(seed)
    ours = out_and_grads(lambda *t: blockwise_causal_attention(*t, scale, dropout_p, block), q, k, v, grad)
    expected = out_and_grads(lambda *t: reference(*t, scale, keep, dropout_p), q, k, v, grad)
    for mine, theirs in zip(ours, expected):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    assert 0.6 < keep.tril().sum() / torch.ones(23, 23).tril().sum() / 4 < 0.9  # about 1 - p kept


def test_gradcheck_with_dropout():
    """Backward is the derivative of forward, the masks included (each call seeded alike)."""
    q, k, v = make_inputs((1, 2, 9, 4), seed=2)

    def seeded(q, k, v):
        torch.manual_seed(3)
        return blockwise_causal_attention(q, k, v, 0.5, 0.3, 4)

    assert torch.autograd.gradcheck(seeded, (q, k, v))


def test_dropout_follows_the_default_generator():
    q, k, v = make_inputs((1, 2, 16, 4), dtype=torch.float32)
    torch.manual_seed(0)
    first, second = (blockwise_causal_attention(q, k, v, 0.5, 0.5) for _ in range(2))
    torch.manual_seed(0)
    again = blockwise_causal_attention(q, k, v, 0.5, 0.5)
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_causal_attention_on_cpu_with_dropout_runs_it():
    q, k, v = make_inputs((1, 2, 40, 8), dtype=torch.float32)
    torch.manual_seed(4)
    public = causal_attention(q, k, v, dropout_p=0.1, backend="torch")
    torch.manual_seed(4)
    torch.testing.assert_close(public, blockwise_causal_attention(q, k, v, 8**-0.5, 0.1), rtol=0, atol=0)


def test_the_custom_op_registration_holds():
    """Schema, fake tensors and autograd registration, as torch.compile relies on them (no dropout: opcheck
    runs the op several times and compares the results)."""
    q, k, v = make_inputs((1, 2, 12, 8), dtype=torch.bfloat16)
    torch.library.opcheck(_forward, (q, k, v, 0.35, 0.0, 4))
