"""Which implementation an op runs: its Triton kernels, or the PyTorch fallback.

"auto" picks Triton when the kernels can run on the given tensors: CUDA tensors with Triton
installed, or any tensors when the kernels were built for Triton's CPU interpreter
(TRITON_INTERPRET=1, how the tests run them). On a CPU-only machine without the interpreter it
answers from the tensors' device alone: neither Triton nor the CUDA driver is touched.

A model holds a `KernelChoice`, one backend per op, as a frozen value: forward reads it and
decides nothing, so torch.compile guards on it instead of tracing a decision.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, fields
from typing import Literal

import torch

Backend = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")
OpName = Literal["layer_norm", "causal_attention", "scaled_causal_softmax"]
OPS: tuple[OpName, ...] = ("layer_norm", "causal_attention", "scaled_causal_softmax")

# A constant looked up once (find_spec does not import Triton): torch.compile reads it without
# tracing a cached function.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def kernels_interpreted() -> bool:
    """Whether the kernels are (or, once imported, will be) built for Triton's CPU interpreter."""
    if not triton_installed():
        return False
    # The environment first: under torch.compile, reading sys.modules installs a guard that the
    # import below (run while tracing) would break in the same frame.
    if "TRITON_INTERPRET" not in os.environ and "megatron_zh.ops.kernels" not in sys.modules:
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


def triton_runs_on(device: torch.device | str) -> bool:
    """Whether the Triton kernels can be launched on tensors of `device` in this process."""
    return triton_can_run(torch.empty(0, device=device))


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


@dataclass(frozen=True)
class KernelChoice:
    """The backend of every op. "auto" entries are resolved per call from the tensors' device;
    `ops.select_kernels` returns a choice without them, made once for a whole run."""

    layer_norm: Backend = "auto"
    causal_attention: Backend = "auto"
    scaled_causal_softmax: Backend = "auto"

    def __post_init__(self) -> None:
        for op in OPS:
            if getattr(self, op) not in BACKENDS:
                raise ValueError(f"KernelChoice.{op} must be one of {BACKENDS}, got {getattr(self, op)!r}")

    @classmethod
    def uniform(cls, backend: Backend) -> KernelChoice:
        """The same backend for every op."""
        if backend not in BACKENDS:
            raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
        return cls(**{op: backend for op in OPS})

    def with_auto_as(self, backend: Literal["triton", "torch"]) -> KernelChoice:
        """This choice with every "auto" entry replaced by `backend`."""
        return KernelChoice(
            **{f.name: backend if getattr(self, f.name) == "auto" else getattr(self, f.name) for f in fields(self)}
        )

    def describe(self, ops: tuple[OpName, ...] = OPS) -> str:
        """The named ops as `layer_norm=triton, causal_attention=torch`."""
        return ", ".join(f"{op}={getattr(self, op)}" for op in ops)
