"""layer_norm: the Triton kernels (run by Triton's interpreter) against float64 PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_zh.ops import layer_norm
from megatron_zh.ops.kernels import layer_norm as kernels

# Per dtype of x (weight and bias float32). Outputs of size ~|bias| + |weight| * 4 are rounded
# once to the dtype; dx likewise; dweight and dbias stay float32 (accumulated in float32 over
# all rows, so their absolute error grows with the row count).
TOLERANCES = {
    torch.float32: dict(
        y=dict(atol=1e-5, rtol=1e-5), dx=dict(atol=1e-5, rtol=1e-5), dparams=dict(atol=1e-4, rtol=1e-5)
    ),
    torch.float16: dict(
        y=dict(atol=2e-3, rtol=2e-3), dx=dict(atol=2e-3, rtol=2e-3), dparams=dict(atol=1e-3, rtol=1e-4)
    ),
    torch.bfloat16: dict(
        y=dict(atol=2e-2, rtol=1.6e-2), dx=dict(atol=2e-2, rtol=1.6e-2), dparams=dict(atol=1e-2, rtol=1e-3)
    ),
}


def make_inputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    hidden = shape[-1]
    # An offset and spread per row, as hidden states have: the kernel must centre before squaring.
    x = (torch.randn(shape, generator=gen) * 2 + torch.randn(*shape[:-1], 1, generator=gen)).to(dtype)
    weight = 1 + 0.5 * torch.randn(hidden, generator=gen)
    bias = 0.5 * torch.randn(hidden, generator=gen)
    grad = torch.randn(shape, generator=gen).to(dtype)
    return x, weight, bias, grad


def float64_reference(x, weight, bias, grad, eps):
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, weight, bias))
    y = F.layer_norm(x64, x.shape[-1:], w64, b64, eps)
    y.backward(grad.double())
    return y.detach(), x64.grad, w64.grad, b64.grad


def check(shape, dtype, seed, eps=1e-5):
    x, weight, bias, grad = make_inputs(shape, dtype, seed)
    xt, wt, bt = (t.clone().requires_grad_() for t in (x, weight, bias))
    y = layer_norm(xt, wt, bt, eps, backend="triton")
    y.backward(grad)
    y_ref, dx_ref, dw_ref, db_ref = float64_reference(x, weight, bias, grad, eps)
    tol = TOLERANCES[dtype]
    assert y.dtype == dtype and xt.grad.dtype == dtype and wt.grad.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, **tol["y"])
    torch.testing.assert_close(xt.grad.double(), dx_ref, **tol["dx"])
    torch.testing.assert_close(wt.grad.double(), dw_ref, **tol["dparams"])
    torch.testing.assert_close(bt.grad.double(), db_ref, **tol["dparams"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "shape", [(1, 1, 768), (1, 17, 768), (2, 129, 768), (1, 1000, 768)], ids=lambda s: "x".join(map(str, s))
)
def test_matches_float64_reference(shape, dtype):
    check(shape, dtype, seed=shape[1])


@pytest.mark.parametrize("shape", [(37, 100), (5, 1), (3, 7, 200)], ids=lambda s: "x".join(map(str, s)))
def test_hidden_sizes_that_are_not_powers_of_two(shape):
    check(shape, torch.float32, seed=1, eps=1e-6)


def test_bfloat16():
    check((3, 33, 256), torch.bfloat16, seed=4)


@pytest.mark.parametrize("n_partials", [1, 2, 7, 64])
def test_parallel_reduction_of_weight_gradients(n_partials):
    # dweight/dbias are summed in per-program partials, then column-parallel: any split of the
    # rows (the GPU uses 4 programs per SM) must give the full sum.
    x, weight, bias, grad = make_inputs((45, 96), torch.float32, seed=n_partials)
    y, mean, rstd = kernels.forward(x, weight, bias, 1e-5)
    dx, dw, db = kernels.backward(grad, x, weight, mean, rstd, n_partials=n_partials)
    _, dx_ref, dw_ref, db_ref = float64_reference(x, weight, bias, grad, 1e-5)
    torch.testing.assert_close(dx.double(), dx_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dw.double(), dw_ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(db.double(), db_ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("config", [{"ROWS": 1}, {"ROWS": 8}], ids=lambda c: f"rows{c['ROWS']}")
def test_row_tilings_agree(config):
    x, weight, bias, grad = make_inputs((29, 64), torch.float32, seed=2)
    y, mean, rstd = kernels.forward(x, weight, bias, 1e-5, config=config)
    dx, dw, db = kernels.backward(grad, x, weight, mean, rstd, config=config)
    y_ref, dx_ref, dw_ref, db_ref = float64_reference(x, weight, bias, grad, 1e-5)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx.double(), dx_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dw.double(), dw_ref, atol=1e-4, rtol=1e-5)


def test_weight_gradients_are_deterministic():
    x, weight, bias, grad = make_inputs((70, 128), torch.float32, seed=8)
    _, mean, rstd = kernels.forward(x, weight, bias, 1e-5)
    first = kernels.backward(grad, x, weight, mean, rstd)
    second = kernels.backward(grad, x, weight, mean, rstd)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_torch_backend_agrees_with_triton():
    x, weight, bias, _ = make_inputs((4, 9, 48), torch.float32, seed=6)
    torch.testing.assert_close(
        layer_norm(x, weight, bias, backend="torch"),
        layer_norm(x, weight, bias, backend="triton"),
        atol=1e-5,
        rtol=1e-5,
    )


def test_bad_arguments_are_rejected():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        layer_norm(x, torch.ones(7), torch.zeros(8))
    with pytest.raises(ValueError, match="at most 16384 features"):
        layer_norm(torch.randn(1, 16385), torch.ones(16385), torch.zeros(16385), backend="triton")
