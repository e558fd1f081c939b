"""causal_attention: the flash-attention Triton kernels (run by Triton's interpreter) against
float64 PyTorch, forward and backward, with and without dropout."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_zh.ops import causal_attention
from megatron_zh.ops.kernels import attention as kernels

# Per dtype. fp16/bf16 inputs go to tl.dot as they are and the probabilities are rounded to the
# input dtype before P @ V (as on the GPU), so errors are a few units of the dtype's epsilon
# times the O(1) magnitudes of outputs and gradients.
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),
}


def make_inputs(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(shape, generator=gen).to(dtype) for _ in range(4))
    return q, k, v, grad


def float64_reference(q, k, v, grad, scale, keep=None, dropout_p=0.0):
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    seq = q.shape[-2]
    scores = (q64 @ k64.transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf")), -1)
    if keep is not None:
        probs = probs * keep.view(probs.shape) / (1.0 - dropout_p)
    out = probs @ v64
    out.backward(grad.double())
    return out.detach(), q64.grad, k64.grad, v64.grad


def assert_matches(actual: tuple, expected: tuple, dtype) -> None:
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), e, **TOLERANCES[dtype], msg=lambda m, name=name: f"{name}: {m}")


def run_public(q, k, v, grad, scale=None, dropout_p=0.0):
    qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
    out = causal_attention(qt, kt, vt, scale, dropout_p, backend="triton")
    out.backward(grad)
    return out.detach(), qt.grad, kt.grad, vt.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "shape", [(2, 3, 1, 64), (2, 3, 17, 64), (1, 3, 129, 64), (1, 2, 1000, 64)], ids=lambda s: "x".join(map(str, s))
)
def test_matches_float64_reference(shape, dtype):
    q, k, v, grad = make_inputs(shape, dtype, seed=shape[2])
    assert_matches(run_public(q, k, v, grad), float64_reference(q, k, v, grad, 1 / math.sqrt(shape[-1])), dtype)


def test_bfloat16():
    q, k, v, grad = make_inputs((1, 2, 129, 64), torch.bfloat16, seed=1)
    assert_matches(run_public(q, k, v, grad), float64_reference(q, k, v, grad, 0.125), torch.bfloat16)


@pytest.mark.parametrize("head_dim", [16, 80], ids=lambda d: f"d{d}")
def test_other_head_dims_and_scale(head_dim):
    q, k, v, grad = make_inputs((2, 1, 45, head_dim), torch.float32, seed=head_dim)
    assert_matches(run_public(q, k, v, grad, scale=0.3), float64_reference(q, k, v, grad, 0.3), torch.float32)


@pytest.mark.parametrize(
    "config",
    [dict(BLOCK_M=16, BLOCK_N=64), dict(BLOCK_M=32, BLOCK_N=32), dict(BLOCK_M=128, BLOCK_N=16)],
    ids=lambda c: f"m{c['BLOCK_M']}n{c['BLOCK_N']}",
)
def test_block_tilings_agree(config):
    # GPU autotuning picks the tiling; the diagonal/off-diagonal split must hold for each,
    # including key blocks wider than query blocks.
    q, k, v, grad = make_inputs((1, 2, 150, 64), torch.float32, seed=3)
    out, lse = kernels.forward(q, k, v, 0.125, 0.0, 0, config=config)
    grads = kernels.backward(grad, q, k, v, out, lse, 0.125, 0.0, 0, config=config)
    assert_matches((out, *grads), float64_reference(q, k, v, grad, 0.125), torch.float32)


def test_strided_views_of_a_fused_qkv_buffer():
    # The model hands the kernel q, k, v as [b, h, s, d] views of one [b, s, 3, h, d] buffer.
    batch, seq, heads, dim = 2, 70, 3, 32
    qkv = torch.randn(batch, seq, 3, heads, dim, generator=torch.Generator().manual_seed(4))
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    grad = torch.randn(batch, heads, seq, dim, generator=torch.Generator().manual_seed(5))
    actual = run_public(q, k, v, grad)
    assert not q.is_contiguous()
    assert actual[0].transpose(1, 2).is_contiguous()  # heads merge back without a copy
    assert_matches(actual, float64_reference(q, k, v, grad, 1 / math.sqrt(dim)), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_dropout_matches_reference_with_the_same_mask(dtype):
    shape, p, seed = (1, 3, 129, 64), 0.2, 123456789
    q, k, v, grad = make_inputs(shape, dtype, seed=9)
    out, lse = kernels.forward(q, k, v, 0.125, p, seed)
    grads = kernels.backward(grad, q, k, v, out, lse, 0.125, p, seed)
    keep = kernels.dropout_keep_mask(shape[0] * shape[1], shape[2], p, seed)
    assert_matches((out, *grads), float64_reference(q, k, v, grad, 0.125, keep.double(), p), dtype)


def test_dropout_mask_statistics():
    p = 0.1
    keep = kernels.dropout_keep_mask(3, 128, p, seed=42)
    # 49152 draws: the kept fraction's standard deviation is 0.0014.
    assert abs(keep.float().mean().item() - (1 - p)) < 0.006
    assert (keep[0] != keep[1]).float().mean() > 0.1  # heads draw independent masks
    assert (keep[:, :, :64] != keep[:, :, 64:]).float().mean() > 0.1  # and so do columns
    assert not torch.equal(keep, kernels.dropout_keep_mask(3, 128, p, seed=43))
    assert torch.equal(keep, kernels.dropout_keep_mask(3, 128, p, seed=42))


def test_public_dropout_follows_torch_manual_seed():
    q, k, v, _ = make_inputs((1, 2, 33, 32), torch.float32, seed=2)
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(causal_attention(q, k, v, dropout_p=0.3, backend="triton"))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])
    no_dropout = causal_attention(q, k, v, backend="triton")
    assert not torch.allclose(outs[0], no_dropout)


def test_torch_backend_agrees_with_triton():
    q, k, v, grad = make_inputs((2, 2, 50, 32), torch.float32, seed=8)
    triton_result = run_public(q, k, v, grad)
    qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
    out = causal_attention(qt, kt, vt, backend="torch")
    out.backward(grad)
    for a, b in zip(triton_result, (out, qt.grad, kt.grad, vt.grad)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_bad_arguments_are_rejected():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="share one"):
        causal_attention(q, q, torch.randn(1, 2, 9, 16))
    with pytest.raises(ValueError, match="dtypes differ"):
        causal_attention(q, q, q.half())
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        causal_attention(q, q, q, dropout_p=1.0)
    with pytest.raises(ValueError, match="head_dim <= 256"):
        big = torch.randn(1, 1, 4, 300)
        causal_attention(big, big, big, backend="triton")
