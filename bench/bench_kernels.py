"""GPU benchmark of megatron_zh's Triton kernels against PyTorch, at the two training shapes.

Kernels: layer_norm, scaled_causal_softmax, causal_attention (flash), forward and backward, in
bf16 at stage 1 (batch 64 x seq 128) and stage 2 (batch 16 x seq 1024), 12 heads, head_dim 64,
hidden 768. Baselines measured in the same run:
  torch.nn.functional  F.layer_norm; F.scaled_dot_product_attention forced to its flash backend
  PyTorch eager        the same maths from unfused ops (what the model would run without kernels)
Metrics: memory-bound ops in GB/s of the bytes the op must move (also as a share of this GPU's
measured copy bandwidth); attention in TFLOP/s of the causal FLOPs (half the s x s square;
backward = 2.5 x forward). The same byte and FLOP counts are used for every implementation, so
GB/s and TFLOP/s compare like with like. Every kernel is also checked against its baseline
before timing (max abs difference printed). Autotuning runs on the first call of each shape.

    python bench/bench_kernels.py                 # on a CUDA GPU; a few minutes
    python bench/bench_kernels.py --interpret     # CPU dry run of the same code at tiny shapes

Without a GPU (and without --interpret) it says so and exits with status 2: nothing measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEADS, HEAD_DIM, HIDDEN, EPS = 12, 64, 768, 1e-5
SHAPES = {"stage1": (64, 128), "stage2": (16, 1024)}  # (batch, seq)
DRY_RUN_SHAPES = {"stage1": (2, 64), "stage2": (1, 160)}  # interpreter-sized
DRY_RUN_HEADS = 2
NO_GPU_EXIT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--interpret",
        action="store_true",
        help="run the whole benchmark on CPU under TRITON_INTERPRET=1 at tiny shapes (checks the script, not speed)",
    )
    p.add_argument("--shapes", default="stage1,stage2", help="comma-separated subset of: " + ",".join(SHAPES))
    p.add_argument("--ops", default="layer_norm,softmax,attention", help="comma-separated subset")
    p.add_argument(
        "--attention-dropout",
        type=float,
        default=0.1,
        help="also time attention fwd+bwd with this dropout (the training setting); 0 to skip",
    )
    return p.parse_args(argv)


@dataclass
class Result:
    op: str
    shape: str
    pass_: str
    ms: dict[str, float]  # implementation -> milliseconds
    work: float  # bytes or FLOPs per call
    unit: str  # "GB/s" or "TFLOP/s"
    max_diff: float  # ours vs the first baseline, relative to the baseline's largest value

    def rate(self, impl: str) -> float:
        scale = 1e9 if self.unit == "GB/s" else 1e12
        return self.work / (self.ms[impl] * 1e-3) / scale


class Bench:
    """Timing and device handling: CUDA events via triton.testing.do_bench, or CPU wall time."""

    def __init__(self, interpret: bool):
        import torch

        self.torch = torch
        self.interpret = interpret
        self.device = torch.device("cpu" if interpret else "cuda")
        self.dtype = torch.bfloat16

    def time(self, fn: Callable[[], object], grad_to_none: list | None = None) -> float:
        """Median milliseconds of fn (one run under the interpreter)."""
        if not self.interpret:
            import triton.testing

            return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
        for t in grad_to_none or []:  # one run: the interpreter is slow and its timings mean nothing
            t.grad = None
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    def copy_bandwidth(self) -> float:
        """GB/s of a large device-to-device copy (read + write), the practical memory roofline."""
        torch = self.torch
        numel = 2**28 if not self.interpret else 2**22  # 1 GiB of float32 on the GPU
        src = torch.empty(numel, dtype=torch.float32, device=self.device)
        dst = torch.empty_like(src)
        ms = self.time(lambda: dst.copy_(src))
        return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9

    def randn(self, *shape: int, requires_grad: bool = False):
        t = self.torch.randn(*shape, device=self.device, dtype=self.dtype)
        return t.requires_grad_(requires_grad)

    def fwd_bwd(self, impls: dict[str, Callable], inputs: list, grad) -> tuple[dict, dict, dict, float]:
        """Times forward, backward and both for each implementation; returns max diffs too."""
        fwd, bwd, both, outputs = {}, {}, {}, {}
        for name, fn in impls.items():
            for t in inputs:
                t.grad = None
            out = fn(*inputs)  # also triggers autotuning / compilation
            out.backward(grad, retain_graph=True)
            outputs[name] = (out.detach().float(), [t.grad.float() for t in inputs])
            fwd[name] = self.time(lambda fn=fn: fn(*inputs))
            bwd[name] = self.time(lambda out=out: out.backward(grad, retain_graph=True), grad_to_none=inputs)
            both[name] = self.time(lambda fn=fn: fn(*inputs).backward(grad), grad_to_none=inputs)
            del out
        names = list(outputs)
        ours, base = outputs[names[0]], outputs[names[1]]
        pairs = [(ours[0], base[0]), *zip(ours[1], base[1])]
        max_diff = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in pairs)
        return fwd, bwd, both, max_diff


def layer_norm_results(bench: Bench, shape_name: str, batch: int, seq: int) -> list[Result]:
    import torch.nn.functional as F

    from megatron_zh.ops import layer_norm

    torch = bench.torch
    x = bench.randn(batch * seq, HIDDEN, requires_grad=True)
    weight = (1 + 0.1 * bench.randn(HIDDEN)).requires_grad_()
    bias = (0.1 * bench.randn(HIDDEN)).requires_grad_()
    grad = bench.randn(batch * seq, HIDDEN)

    def eager(x, weight, bias):
        xf = x.float()
        mean = xf.mean(-1, keepdim=True)
        var = (xf - mean).pow(2).mean(-1, keepdim=True)
        return ((xf - mean) * torch.rsqrt(var + EPS) * weight + bias).to(x.dtype)

    impls = {
        "ours": lambda x, w, b: layer_norm(x, w, b, EPS, backend="triton"),
        "torch.F": lambda x, w, b: F.layer_norm(x, (HIDDEN,), w, b, EPS),
        "eager": eager,
    }
    fwd, bwd, both, diff = bench.fwd_bwd(impls, [x, weight, bias], grad)
    act = x.numel() * x.element_size()
    # Forward reads x, writes y; backward reads x and dy, writes dx (per-row stats and the
    # parameter-sized tensors are negligible at these sizes).
    return [
        Result("layer_norm", shape_name, "fwd", fwd, 2 * act, "GB/s", diff),
        Result("layer_norm", shape_name, "bwd", bwd, 3 * act, "GB/s", diff),
        Result("layer_norm", shape_name, "fwd+bwd", both, 5 * act, "GB/s", diff),
    ]


def softmax_results(bench: Bench, shape_name: str, batch: int, seq: int, heads: int) -> list[Result]:
    from megatron_zh.ops import scaled_causal_softmax

    torch = bench.torch
    scale = 1 / math.sqrt(HEAD_DIM)
    scores = bench.randn(batch, heads, seq, seq, requires_grad=True)
    grad = bench.randn(batch, heads, seq, seq)
    future = torch.ones(seq, seq, dtype=torch.bool, device=bench.device).triu(1)

    def eager(s):
        return torch.softmax((s.float() * scale).masked_fill(future, float("-inf")), dim=-1).to(s.dtype)

    impls = {"ours": lambda s: scaled_causal_softmax(s, scale, backend="triton"), "eager": eager}
    fwd, bwd, both, diff = bench.fwd_bwd(impls, [scores], grad)
    elem = scores.element_size()
    full = scores.numel() * elem
    causal = batch * heads * seq * (seq + 1) // 2 * elem
    # Forward must read the causal lower triangle and write the full matrix (zeros above);
    # backward reads y and dy on the triangle and writes the full dx.
    return [
        Result("softmax", shape_name, "fwd", fwd, causal + full, "GB/s", diff),
        Result("softmax", shape_name, "bwd", bwd, 2 * causal + full, "GB/s", diff),
        Result("softmax", shape_name, "fwd+bwd", both, 3 * causal + 2 * full, "GB/s", diff),
    ]


def attention_results(
    bench: Bench, shape_name: str, batch: int, seq: int, heads: int, dropout_p: float
) -> list[Result]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from megatron_zh.ops import causal_attention

    torch = bench.torch
    scale = 1 / math.sqrt(HEAD_DIM)
    q, k, v = (bench.randn(batch, heads, seq, HEAD_DIM, requires_grad=True) for _ in range(3))
    grad = bench.randn(batch, heads, seq, HEAD_DIM)
    future = torch.ones(seq, seq, dtype=torch.bool, device=bench.device).triu(1)

    # The GPU baseline is SDPA's flash backend, forced; the CPU dry run lets it fall back to the
    # math backend where CPU flash lacks dropout.
    backends = [SDPBackend.FLASH_ATTENTION] + ([SDPBackend.MATH] if bench.interpret else [])

    def sdpa_flash(q, k, v, p=0.0):
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scale)

    def eager(q, k, v, p=0.0):
        scores = (q @ k.transpose(-1, -2)).float() * scale
        probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1).to(q.dtype)
        return F.dropout(probs, p) @ v

    impls = {
        "ours": lambda q, k, v: causal_attention(q, k, v, scale, backend="triton"),
        "torch.F": sdpa_flash,
        "eager": eager,
    }
    fwd, bwd, both, diff = bench.fwd_bwd(impls, [q, k, v], grad)
    # Causal FLOPs: two seq x seq x head_dim matmuls over half the square; backward does 2.5x.
    flops = 4 * batch * heads * seq * seq * HEAD_DIM / 2
    results = [
        Result("attention", shape_name, "fwd", fwd, flops, "TFLOP/s", diff),
        Result("attention", shape_name, "bwd", bwd, 2.5 * flops, "TFLOP/s", diff),
        Result("attention", shape_name, "fwd+bwd", both, 3.5 * flops, "TFLOP/s", diff),
    ]
    if dropout_p > 0:
        dropped = {
            "ours": lambda q, k, v: causal_attention(q, k, v, scale, dropout_p, backend="triton"),
            "torch.F": lambda q, k, v: sdpa_flash(q, k, v, dropout_p),
            "eager": lambda q, k, v: eager(q, k, v, dropout_p),
        }
        _, _, both, _ = bench.fwd_bwd(dropped, [q, k, v], grad)
        # Different random masks: outputs are not comparable, so no difference is reported.
        results.append(
            Result(f"attention p={dropout_p:g}", shape_name, "fwd+bwd", both, 3.5 * flops, "TFLOP/s", float("nan"))
        )
    return results


def print_table(results: list[Result], bandwidth: float) -> None:
    header = (
        f"{'op':<18}{'shape':<8}{'pass':<9}{'ours ms':>9}{'F ms':>9}{'eager ms':>9}"
        f"{'ours':>10}{'F':>10}{'eager':>10}{'unit':>9}{'vs F':>7}{'vs eager':>9}{'%copyBW':>8}{'rel diff':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        has_f = "torch.F" in r.ms
        f_ms = f"{r.ms['torch.F']:9.3f}" if has_f else f"{'-':>9}"
        f_rate = f"{r.rate('torch.F'):10.1f}" if has_f else f"{'-':>10}"
        vs_f = f"{r.ms['torch.F'] / r.ms['ours']:6.2f}x" if has_f else f"{'-':>7}"
        share = f"{100 * r.rate('ours') / bandwidth:7.0f}%" if r.unit == "GB/s" else f"{'':>8}"
        print(
            f"{r.op:<18}{r.shape:<8}{r.pass_:<9}{r.ms['ours']:9.3f}{f_ms}{r.ms['eager']:9.3f}"
            f"{r.rate('ours'):10.1f}{f_rate}{r.rate('eager'):10.1f}{r.unit:>9}"
            f"{vs_f}{r.ms['eager'] / r.ms['ours']:8.2f}x{share}{r.max_diff:10.1e}"
        )


def print_targets(results: list[Result], bandwidth: float) -> None:
    print("\nTargets: layer_norm and softmax >= 80% of copy bandwidth; attention fwd+bwd at least SDPA flash's speed")
    for r in results:
        if r.pass_ == "fwd+bwd" and r.op in ("layer_norm", "softmax"):
            share = r.rate("ours") / bandwidth
            print(
                f"  {r.op:<18}{r.shape:<8}{100 * share:5.0f}% of copy bandwidth   {'met' if share >= 0.8 else 'MISSED'}"
            )
        elif r.pass_ == "fwd+bwd" and r.op.startswith("attention"):
            ratio = r.ms["torch.F"] / r.ms["ours"]
            print(f"  {r.op:<18}{r.shape:<8}{ratio:5.2f}x SDPA flash            {'met' if ratio >= 1.0 else 'MISSED'}")


def summary(results: list[Result], bandwidth: float, device: str) -> dict:
    """The fwd+bwd rows, machine-readable (bench/gpu_checks.sh collects the `summary:` line)."""
    rows = []
    for r in results:
        if r.pass_ != "fwd+bwd":
            continue
        rows.append(
            {
                "op": r.op,
                "shape": r.shape,
                "unit": r.unit,
                "ours": round(r.rate("ours"), 2),
                "torch_F": round(r.rate("torch.F"), 2) if "torch.F" in r.ms else None,
                "eager": round(r.rate("eager"), 2),
                "vs_F": round(r.ms["torch.F"] / r.ms["ours"], 3) if "torch.F" in r.ms else None,
                "vs_eager": round(r.ms["eager"] / r.ms["ours"], 3),
                "rel_diff": None if math.isnan(r.max_diff) else float(f"{r.max_diff:.2e}"),
            }
        )
    return {"device": device, "copy_bandwidth_gbs": round(bandwidth, 1), "fwd_bwd": rows}


def print_tuned_configs() -> None:
    from megatron_zh.ops.kernels import attention, layer_norm, softmax

    print("\nAutotuned configs (last shape):")
    for module in (layer_norm, softmax, attention):
        for name in sorted(vars(module)):
            kernel = getattr(module, name)
            if hasattr(kernel, "best_config") and getattr(kernel, "best_config", None) is not None:
                print(f"  {module.__name__.rsplit('.', 1)[-1]}.{name}: {kernel.best_config}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernels
    import torch
    import triton

    if not args.interpret and not torch.cuda.is_available():
        print(
            "bench_kernels.py: no CUDA GPU is present, so nothing was measured. The Triton kernels are timed on "
            "a GPU only; run this on a CUDA machine (H100/H200 expected), or use --interpret for a CPU dry run "
            "of the script at tiny shapes.",
            file=sys.stderr,
        )
        return NO_GPU_EXIT

    shapes = [s for s in args.shapes.split(",") if s]
    ops = [o for o in args.ops.split(",") if o]
    unknown = sorted(set(shapes) - set(SHAPES)) + sorted(set(ops) - {"layer_norm", "softmax", "attention"})
    if unknown:
        print(f"bench_kernels.py: unknown shape/op name(s) {unknown}", file=sys.stderr)
        return 1

    bench = Bench(args.interpret)
    torch.manual_seed(0)
    started = time.perf_counter()
    device = (
        "CPU (Triton interpreter dry run: timings mean nothing)" if args.interpret else torch.cuda.get_device_name()
    )
    print(f"device: {device}; torch {torch.__version__}, triton {triton.__version__}, dtype bf16")
    bandwidth = bench.copy_bandwidth()
    print(f"measured copy bandwidth: {bandwidth:.0f} GB/s\n")
    table = DRY_RUN_SHAPES if args.interpret else SHAPES
    heads = DRY_RUN_HEADS if args.interpret else HEADS
    results: list[Result] = []
    for shape_name in shapes:
        batch, seq = table[shape_name]
        label = f"{shape_name} (batch {batch} x seq {seq}, {heads} heads)"
        if "layer_norm" in ops:
            results += layer_norm_results(bench, shape_name, batch, seq)
            print(f"  done layer_norm {label} at {time.perf_counter() - started:.0f}s", flush=True)
        if "softmax" in ops:
            results += softmax_results(bench, shape_name, batch, seq, heads)
            print(f"  done softmax    {label} at {time.perf_counter() - started:.0f}s", flush=True)
        if "attention" in ops:
            results += attention_results(bench, shape_name, batch, seq, heads, args.attention_dropout)
            print(f"  done attention  {label} at {time.perf_counter() - started:.0f}s", flush=True)
    print()
    print_table(results, bandwidth)
    print(
        "\nrel diff: max |ours - baseline| / max |baseline| over the output and every input gradient "
        "(bf16: ~1e-2 is rounding)"
    )
    if args.interpret:
        print("\n(dry run under the interpreter: the timings above say nothing about GPU speed)")
    else:
        print_targets(results, bandwidth)
    print_tuned_configs()
    print(f"\ntotal time {time.perf_counter() - started:.0f}s")
    print("summary: " + json.dumps(summary(results, bandwidth, device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
