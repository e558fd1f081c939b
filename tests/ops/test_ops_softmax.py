"""scaled_causal_softmax: the Triton kernels (run by Triton's interpreter) against float64 PyTorch."""

from __future__ import annotations

import pytest
import torch

from megatron_zh.ops import scaled_causal_softmax
from megatron_zh.ops.kernels import softmax as kernels

# Per dtype: outputs are probabilities (<= 1) rounded once to the dtype (2^-11 relative for fp16,
# 2^-8 for bf16); gradients add one more rounding of y and of dx, computed in float32.
TOLERANCES = {
    torch.float32: dict(forward=dict(atol=1e-6, rtol=1e-5), backward=dict(atol=1e-6, rtol=1e-5)),
    torch.float16: dict(forward=dict(atol=1e-4, rtol=1e-3), backward=dict(atol=5e-4, rtol=1e-2)),
    torch.bfloat16: dict(forward=dict(atol=1e-3, rtol=8e-3), backward=dict(atol=4e-3, rtol=5e-2)),
}


def reference(scores: torch.Tensor, scale: float) -> torch.Tensor:
    seq_q, seq_k = scores.shape[-2:]
    future = torch.ones(seq_q, seq_k, dtype=torch.bool).triu(1)
    return torch.softmax((scores * scale).masked_fill(future, float("-inf")), dim=-1)


def check(shape: tuple[int, ...], dtype: torch.dtype, scale: float, seed: int, config: dict | None = None) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = (3 * torch.randn(shape, generator=gen)).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)

    if config is None:
        x = scores.clone().requires_grad_()
        probs = scaled_causal_softmax(x, scale, backend="triton")
        probs.backward(grad)
        dx = x.grad
    else:
        probs = kernels.forward(scores, scale, config=config)
        dx = kernels.backward(probs, grad, scale, config=config)

    x64 = scores.double().requires_grad_()
    expected = reference(x64, scale)
    expected.backward(grad.double())
    tol = TOLERANCES[dtype]
    assert probs.dtype == dtype and dx.dtype == dtype
    torch.testing.assert_close(probs.double(), expected.detach(), **tol["forward"])
    torch.testing.assert_close(dx.double(), x64.grad, **tol["backward"])
    # The masked upper triangle is exactly zero, in the output and in the gradient.
    future = torch.ones(shape[-2:], dtype=torch.bool).triu(1)
    assert not probs[..., future].any() and not dx[..., future].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "shape", [(2, 3, 1, 1), (2, 3, 17, 17), (3, 5, 129, 129), (1, 1, 1000, 1000)], ids=lambda s: "x".join(map(str, s))
)
def test_matches_float64_reference(shape, dtype):
    check(shape, dtype, scale=0.125, seed=sum(shape))


@pytest.mark.parametrize("seq", [1024, 2048], ids=lambda n: f"seq{n}")
def test_stage2_length_and_megatrons_limit(seq):
    """Stage 2's 1024 and Megatron's fused-softmax limit of 2048, in fp16 (rows of 2048 keys in one program)."""
    check((1, 1, seq, seq), torch.float16, scale=0.125, seed=seq)


@pytest.mark.parametrize("shape", [(2, 3, 17, 17), (1, 2, 129, 129)], ids=lambda s: "x".join(map(str, s)))
def test_bfloat16(shape):
    check(shape, torch.bfloat16, scale=0.3, seed=7)


@pytest.mark.parametrize("shape", [(2, 2, 5, 9), (1, 3, 9, 5)], ids=["keys>queries", "queries>keys"])
def test_rectangular_scores_are_top_left_causal(shape):
    check(shape, torch.float32, scale=1.7, seed=3)


@pytest.mark.parametrize("config", [{"ROWS": 1}, {"ROWS": 16}], ids=lambda c: f"rows{c['ROWS']}")
def test_row_tilings_agree(config):
    # GPU autotuning picks ROWS per shape; every tiling must give the reference result.
    check((3, 1, 37, 37), torch.float32, scale=0.5, seed=11, config=config)


def test_non_contiguous_input_and_leading_dims():
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(4, 23, 2, 23, generator=gen)
    scores = base.transpose(1, 2)  # [4, 2, 23, 23], not contiguous
    torch.testing.assert_close(
        scaled_causal_softmax(scores, 0.7, backend="triton").double(),
        reference(scores.double(), 0.7),
        atol=1e-6,
        rtol=1e-5,
    )
    three_d = torch.randn(6, 31, 31, generator=gen)
    torch.testing.assert_close(
        scaled_causal_softmax(three_d, 0.7, backend="triton").double(),
        reference(three_d.double(), 0.7),
        atol=1e-6,
        rtol=1e-5,
    )


def test_torch_backend_agrees_with_triton():
    scores = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(
        scaled_causal_softmax(scores, 0.4, backend="torch"),
        scaled_causal_softmax(scores, 0.4, backend="triton"),
        atol=1e-6,
        rtol=1e-5,
    )


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="at least 2 dims"):
        scaled_causal_softmax(torch.randn(5), 1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        scaled_causal_softmax(torch.randn(2, 2), 1.0, backend="cuda")
    with pytest.raises(ValueError, match="at most 16384 columns"):
        scaled_causal_softmax(torch.randn(1, 16385), 1.0, backend="triton")
