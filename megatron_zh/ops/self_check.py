"""One op's Triton forward and backward, run once on a device against the PyTorch computation.

`self_check(use, device, dtype)` draws inputs of the use's shape (q, k, v as strided views of one
fused [b, s, 3, h, d] buffer, as the model makes them), runs the public op with backend="triton"
(so the custom ops and their autograd formula are what is tested), then the same maths in
explicit float32 PyTorch code from the same rounded inputs, and compares the output and every
gradient. Any exception (a compile error, out of resources, a launch error) is a failure too.

A tensor fails when an element is off by more than atol + rtol * |reference| (a wrong tile or row)
or when its relative L2 error is over rel_l2 (a small error everywhere), or when it holds a NaN or
an infinity. The tolerances are per dtype and meant to catch a wrong kernel, not to grade
rounding: a 5% error is caught in every dtype, a 0.1% one only in float32. A result's `score` is
the worst error as a share of its tolerance (1 is the limit), so a log of scores shows the margin.

The check leaves the process as it found it: inputs come from a private generator, and the
dropout seed the op draws from PyTorch's CPU generator is drawn inside `fork_rng`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron_zh.ops.attention import causal_attention
from megatron_zh.ops.dispatch import OpName
from megatron_zh.ops.layer_norm import layer_norm
from megatron_zh.ops.softmax import scaled_causal_softmax

EPS = 1e-5
SOFTMAX_SCALE = 0.125
SEED = 20240521
MAX_DETAIL = 300  # characters of an exception's text kept in a one-line report


@dataclass(frozen=True)
class KernelUse:
    """One way a model calls an op, at the shape it calls it with."""

    op: OpName
    shape: tuple[int, ...]  # layer_norm [b, s, hidden]; causal_attention [b, h, s, d]; softmax [b, h, s, s]
    dropout_p: float = 0.0  # causal_attention only: a different compiled kernel when > 0

    def describe(self) -> str:
        """Where in the model this use sits: `shape [2, 12, 128, 64] dropout 0.1`."""
        dropout = f" dropout {self.dropout_p:g}" if self.dropout_p else ""
        return f"shape {list(self.shape)}{dropout}"


@dataclass(frozen=True)
class Tolerance:
    atol: float  # elementwise: |diff| <= atol + rtol * |reference|
    rtol: float
    rel_l2: float  # whole tensor: ||diff|| / ||reference||

    def __str__(self) -> str:
        return f"atol={self.atol:g} rtol={self.rtol:g} rel_l2={self.rel_l2:g}"


# Against a float32 reference from the same rounded inputs: about twice the unit tests'
# elementwise tolerances (which compare with float64), and an L2 bound several times the dtype's
# rounding noise. Healthy kernels score 0.01-0.03 in float32 and 0.2-0.45 in bf16 under the
# interpreter (which upcasts bf16 before any arithmetic; a GPU's bf16 tensor cores round more).
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(atol=5e-5, rtol=2e-4, rel_l2=1e-5),
    torch.float16: Tolerance(atol=1e-2, rtol=1e-2, rel_l2=2e-3),
    torch.bfloat16: Tolerance(atol=8e-2, rtol=8e-2, rel_l2=1.5e-2),
}
# float32 attention runs tl.dot in TF32 unless PyTorch's matmul precision is "highest" (kernels.common).
TF32_TOLERANCE = Tolerance(atol=5e-3, rtol=5e-3, rel_l2=1e-3)


@dataclass(frozen=True)
class CheckResult:
    use: KernelUse
    ok: bool
    score: float  # the worst tensor's error as a share of its tolerance (inf: non-finite or raised)
    detail: str  # one line: the worst tensor and its error, or the exception
    seconds: float


def tolerance(op: OpName, dtype: torch.dtype) -> Tolerance:
    if dtype == torch.float32 and op == "causal_attention" and torch.get_float32_matmul_precision() != "highest":
        return TF32_TOLERANCE
    return TOLERANCES[dtype]


def one_line(error: BaseException) -> str:
    """An exception as one short line (Triton's compile errors span many)."""
    text = re.sub(r"\s+", " ", str(error)).strip()
    if len(text) > MAX_DETAIL:
        text = text[: MAX_DETAIL - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def compare(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance) -> tuple[float, str]:
    """(error as a share of the tolerance, a description) for one output or gradient."""
    a, e = actual.detach().float(), expected.detach().float()
    if a.shape != e.shape:
        return math.inf, f"{name}: shape {list(a.shape)}, expected {list(e.shape)}"
    bad = int((~torch.isfinite(a)).sum())
    if bad:
        return math.inf, f"{name}: {bad} non-finite values of {a.numel()}"
    if a.numel() == 0:
        return 0.0, f"{name}: empty"
    diff = (a - e).abs()
    elementwise = (diff / (tol.atol + tol.rtol * e.abs())).max().item()
    rel_l2 = (diff.norm() / e.norm().clamp_min(1e-30)).item()
    return max(elementwise, rel_l2 / tol.rel_l2), f"{name}: max |diff| {diff.max().item():.3g}, rel L2 {rel_l2:.2g}"


def _inputs(use: KernelUse, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(1234)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device).to(dtype)

    if use.op == "layer_norm":
        hidden = use.shape[-1]
        weight, bias = 1.0 + 0.1 * randn(hidden), 0.1 * randn(hidden)
        return {"x": randn(*use.shape), "weight": weight, "bias": bias, "grad": randn(*use.shape)}
    if use.op == "causal_attention":
        b, h, s, d = use.shape
        q, k, v = (t.transpose(1, 2) for t in randn(b, s, 3, h, d).unbind(2))
        return {"q": q, "k": k, "v": v, "grad": randn(b, h, s, d)}
    return {"scores": randn(*use.shape), "grad": randn(*use.shape)}


@contextmanager
def _seeded_cpu_generator(seed: int) -> Iterator[None]:
    """PyTorch's CPU generator at `seed` inside, as it was outside (CUDA generators untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _leaves(inputs: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {name: t.detach().to(dtype or t.dtype).requires_grad_() for name, t in inputs.items() if name != "grad"}


def _with_grads(out: torch.Tensor, leaves: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"out": ..., "dx": ...}: the output and the gradient of every input (zeros if it got none)."""
    grads = {f"d{name}": t.grad if t.grad is not None else torch.zeros_like(t) for name, t in leaves.items()}
    return {"out": out, **grads}


def _run_triton(use: KernelUse, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    leaves = _leaves(inputs)
    if use.op == "layer_norm":
        out = layer_norm(leaves["x"], leaves["weight"], leaves["bias"], EPS, backend="triton")
    elif use.op == "causal_attention":
        with _seeded_cpu_generator(SEED):  # the op draws its dropout seed here
            out = causal_attention(leaves["q"], leaves["k"], leaves["v"], None, use.dropout_p, backend="triton")
    else:
        out = scaled_causal_softmax(leaves["scores"], SOFTMAX_SCALE, backend="triton")
    out.backward(inputs["grad"])
    return _with_grads(out, leaves)


def _dropout_keep(use: KernelUse, device: torch.device) -> torch.Tensor:
    """The keep-mask the op used: the seed it drew, through the kernels' own Philox mask."""
    from megatron_zh.ops.kernels import attention as kernels

    b, h, s, _ = use.shape
    with _seeded_cpu_generator(SEED):
        seed = int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64))
    return kernels.dropout_keep_mask(b * h, s, use.dropout_p, seed, device=device).view(b, h, s, s)


def _run_reference(use: KernelUse, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same maths in float32, written out (no fused SDPA, no TF32)."""
    leaves = _leaves(inputs, torch.float32)
    if use.op == "layer_norm":
        x = leaves["x"]
        out = F.layer_norm(x, x.shape[-1:], leaves["weight"], leaves["bias"], EPS)
    elif use.op == "causal_attention":
        q, k, v = leaves["q"], leaves["k"], leaves["v"]
        s, d = q.shape[-2:]
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d)
        future = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        if use.dropout_p > 0.0:
            probs = probs * _dropout_keep(use, q.device) / (1.0 - use.dropout_p)
        out = torch.einsum("bhqk,bhkd->bhqd", probs, v)
    else:
        scores = leaves["scores"]
        future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1)
        out = torch.softmax((scores * SOFTMAX_SCALE).masked_fill(future, float("-inf")), dim=-1)
    out.backward(inputs["grad"].float())
    return _with_grads(out, leaves)


@contextmanager
def _exact_float32_matmuls() -> Iterator[None]:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def self_check(use: KernelUse, device: torch.device | str, dtype: torch.dtype) -> CheckResult:
    """Run one use's Triton forward and backward once and compare every tensor with PyTorch's."""
    device = torch.device(device)
    tol = tolerance(use.op, dtype)  # before the reference changes the matmul precision
    start = time.perf_counter()
    try:
        inputs = _inputs(use, device, dtype)
        actual = _run_triton(use, inputs)
        with _exact_float32_matmuls():
            expected = _run_reference(use, inputs)
        worst, worst_detail = 0.0, ""
        for name, tensor in actual.items():
            score, detail = compare(name, tensor, expected[name], tol)
            if score >= worst:
                worst, worst_detail = score, detail
    except Exception as error:  # anything that stops the kernels from building, launching or running
        return CheckResult(use, False, math.inf, one_line(error), time.perf_counter() - start)
    detail = f"{worst_detail} ({worst:.2g} of tolerance {tol})"
    return CheckResult(use, worst <= 1.0, worst, detail, time.perf_counter() - start)


def check_kernels(
    uses: Iterable[KernelUse], device: torch.device | str, dtype: torch.dtype
) -> dict[OpName, list[CheckResult]]:
    """self_check every use, grouped by op (an op passes when all of its uses do)."""
    results: dict[OpName, list[CheckResult]] = {}
    for use in uses:
        results.setdefault(use.op, []).append(self_check(use, device, dtype))
    return results
