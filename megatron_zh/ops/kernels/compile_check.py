"""Compile every Triton kernel for a GPU architecture on a machine without a GPU.

The CPU tests run the kernels under Triton's interpreter, which checks their maths but not that
they compile for a real GPU (types, layouts, shared memory, ptxas). This drives the real
launchers on small CPU tensors with the launch replaced by a recorder, then compiles each
recorded kernel call, for each of its autotuning configs, ahead of time with Triton's own
compiler and the ptxas bundled in the triton wheel; no driver and no GPU are involved.

    python -m megatron_zh.ops.kernels.compile_check                    # sm_90, every config
    python -m megatron_zh.ops.kernels.compile_check --arch 80,90 --first-config-only

Must run without TRITON_INTERPRET (the kernels must be built for the GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend

from megatron_zh.ops.kernels import INTERPRETED, attention, layer_norm, softmax

_TYPE_NAMES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int8: "i8",
    torch.int32: "i32",
    torch.int64: "i64",
}
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@dataclass
class Launch:
    kernel: object  # a JITFunction, or an Autotuner around one
    args: tuple
    kwargs: dict
    label: str


@contextlib.contextmanager
def recorded_launches(label: str, sink: list[Launch]) -> Iterator[None]:
    """Within this block the kernel modules record their launches instead of running them."""

    def record(kernel, grid, *args, config=None, **kwargs):
        sink.append(Launch(kernel, args, {**kwargs, **(config or {})}, label))

    # Any: the kernel modules' `launch` is the name their code calls, swapped here for a recorder.
    modules: tuple[Any, ...] = (attention, layer_norm, softmax)
    saved = [m.launch for m in modules]
    for m in modules:
        m.launch = record
    try:
        yield
    finally:
        for m, original in zip(modules, saved):
            m.launch = original


def record_all(dtypes: list[torch.dtype]) -> list[Launch]:
    """Every kernel call the ops make at training-like shapes, per dtype (and dropout on/off)."""
    launches: list[Launch] = []
    batch, heads, seq, head_dim, hidden = 2, 12, 128, 64, 768
    for dtype in dtypes:
        name = _TYPE_NAMES[dtype]
        q = torch.zeros(batch, seq, 3, heads, head_dim, dtype=dtype)[:, :, 0].transpose(1, 2)  # model layout
        lse = torch.zeros(batch * heads, seq)
        for dropout_p in (0.0, 0.1):
            with recorded_launches(f"attention {name} dropout={dropout_p}", launches):
                attention.forward(q, q, q, 0.125, dropout_p, seed=1234)
                attention.backward(q, q, q, q, q, lse, 0.125, dropout_p, seed=1234)
        with recorded_launches(f"softmax {name}", launches):
            scores = torch.zeros(batch, heads, seq, seq, dtype=dtype)
            softmax.forward(scores, 0.125)
            softmax.backward(scores, scores, 0.125)
        with recorded_launches(f"layer_norm {name}", launches):
            x = torch.zeros(batch * seq, hidden, dtype=dtype)
            w = torch.zeros(hidden, dtype=dtype)
            layer_norm.forward(x, w, w, 1e-5)
            stats = torch.zeros(batch * seq)
            layer_norm.backward(x, x, w, stats, stats)
    with recorded_launches("attention dropout mask", launches):
        attention.dropout_keep_mask(2, 64, 0.1, seed=1234)
    return launches


def _configs(launch: Launch, first_only: bool) -> tuple[Any, list[triton.Config]]:
    kernel = launch.kernel
    if not isinstance(kernel, triton.runtime.Autotuner):
        options = {k: launch.kwargs[k] for k in _LAUNCH_OPTIONS if k in launch.kwargs}
        return kernel, [triton.Config({}, **options)]
    configs = list(kernel.configs)
    if kernel.early_config_prune:
        named = dict(zip(kernel.arg_names, launch.args))
        configs = kernel.early_config_prune(configs, named, **launch.kwargs)
    return kernel.fn, configs[:1] if first_only else configs


def _source(jit, args: tuple, meta: dict) -> ASTSource:
    """The ASTSource the runtime would build for these arguments (same specialisations)."""
    values = dict(zip(jit.arg_names, args))
    values.update({k: v for k, v in meta.items() if k not in _LAUNCH_OPTIONS})
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(jit.params):
        value = values[param.name]
        if param.is_constexpr or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _TYPE_NAMES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # allocations are 16-byte aligned
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{jit.__name__}: cannot type argument {param.name}={value!r}")
    return ASTSource(fn=jit, signature=signature, constexprs=constexprs, attrs=attrs)


def compile_all(archs: list[int], dtypes: list[torch.dtype], first_only: bool) -> int:
    """Compiles everything; prints one line per kernel variant; returns the number of failures."""
    failures = 0
    launches = record_all(dtypes)
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        for launch in launches:
            jit, configs = _configs(launch, first_only)
            for config in configs:
                meta = {**launch.kwargs, **config.all_kwargs()}
                options = backend.parse_options({k: meta[k] for k in _LAUNCH_OPTIONS if meta.get(k) is not None})
                what = f"sm_{arch} {launch.label:<34} {jit.__name__:<28} {config.all_kwargs()}"
                start = time.perf_counter()
                try:
                    compiled = triton.compile(_source(jit, launch.args, meta), target=target, options=options.__dict__)
                except Exception as error:  # report every failing variant, not just the first
                    failures += 1
                    print(f"FAILED {what}\n  {type(error).__name__}: {str(error).strip()[:2000]}", flush=True)
                    continue
                shared = compiled.metadata.shared
                print(f"ok     {what} ({time.perf_counter() - start:.1f}s, {shared} B shared)", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="90", help="comma-separated CUDA compute capabilities, e.g. 80,90")
    p.add_argument("--dtypes", default="bf16,fp16,fp32", help="comma-separated subset of bf16,fp16,fp32")
    p.add_argument("--first-config-only", action="store_true", help="one autotuning config per kernel (fast)")
    args = p.parse_args(argv)
    if INTERPRETED:
        print("compile_check: unset TRITON_INTERPRET; the kernels were built for the interpreter", file=sys.stderr)
        return 2
    by_name = {v: k for k, v in _TYPE_NAMES.items()}
    dtypes = [by_name[name] for name in args.dtypes.split(",")]
    failures = compile_all([int(a) for a in args.arch.split(",")], dtypes, args.first_config_only)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
