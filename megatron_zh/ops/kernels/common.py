"""Launch helpers shared by the kernels: interpreter detection, autotuning configs, devices."""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

# Fixed when this module is imported, like `triton.jit` itself decides then between compiling
# for the GPU and wrapping the function for the CPU interpreter.
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def tuning_configs(gpu: list[triton.Config], interpreted: triton.Config) -> list[triton.Config]:
    """Configs for `triton.autotune`: the GPU list, or the single fixed one when interpreting.

    The autotuner times configs with the GPU benchmarker, which the interpreter cannot use; a
    single config is run directly without timing.
    """
    return [interpreted] if INTERPRETED else gpu


def upcast_on_load(dtype: torch.dtype) -> bool:
    """Whether kernels must turn loaded values into float32 before any arithmetic.

    The interpreter stores bfloat16 as raw 16-bit integers, so bf16 math and bf16 `tl.dot` give
    garbage there; on a GPU the bf16 tiles go to the tensor cores as they are.
    """
    return INTERPRETED and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision: exact float32 unless PyTorch's own matmul setting allows TF32.

    16-bit operands get Triton's default ("tf32"), which leaves them as they are.
    """
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def device_guard(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make the tensor's GPU current for the launch (Triton launches on the current device)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def parallel_programs(tensor: torch.Tensor, per_sm: int, interpreted: int) -> int:
    """How many programs a grid-stride kernel should run: a few per SM on a GPU."""
    if INTERPRETED or not tensor.is_cuda:
        return interpreted
    return per_sm * _sm_count(tensor.device.index if tensor.device.index is not None else torch.cuda.current_device())


def launch(kernel, grid, *args, config: dict | None = None, **kwargs) -> None:
    """Launch an autotuned kernel; with `config` (block sizes, num_warps...) bypass the tuner
    and run exactly that tiling, as tests and benchmarks do to cover several."""
    if config is None:
        kernel[grid](*args, **kwargs)
    else:
        kernel.fn[grid](*args, **kwargs, **config)
