"""Which implementation an op runs: its Triton kernels, or the PyTorch fallback.

"auto" picks Triton when the kernels can run on the given tensors: CUDA tensors with Triton
installed, or any tensors when the kernels were built for Triton's CPU interpreter
(TRITON_INTERPRET=1, how the tests run them). On a CPU-only machine without the interpreter it
answers from the tensors' device alone: neither Triton nor the CUDA driver is touched.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from typing import Literal

import torch

Backend = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def kernels_interpreted() -> bool:
    """Whether the kernels are (or, once imported, will be) built for Triton's CPU interpreter."""
    if not triton_installed():
        return False
    if "megatron_zh.ops.kernels" not in sys.modules and "TRITON_INTERPRET" not in os.environ:
        return False  # settled without importing Triton
    from megatron_zh.ops.kernels import INTERPRETED  # Triton itself parses TRITON_INTERPRET

    return INTERPRETED


def triton_can_run(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernels can be launched on these tensors in this process."""
    if not triton_installed():
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return kernels_interpreted()


def resolve_backend(backend: Backend, op: str, *tensors: torch.Tensor) -> Literal["triton", "torch"]:
    """Turn "auto" into a concrete backend; fail clearly when "triton" cannot run here."""
    if backend == "torch":
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if triton_can_run(*tensors):
        return "triton"
    if backend == "triton":
        devices = sorted({str(t.device) for t in tensors})
        raise RuntimeError(
            f"{op}: backend='triton' needs CUDA tensors with Triton installed, or TRITON_INTERPRET=1 "
            f"set before megatron_zh.ops.kernels is imported; got tensors on {devices}"
        )
    return "torch"
