"""Fused GPU ops with Triton forward and backward kernels and PyTorch fallbacks off-GPU.

Every op takes `backend="auto" | "triton" | "torch"`; a model holds one `KernelChoice` for all of
them (see `megatron_zh.ops.dispatch`). The Triton paths are PyTorch custom ops, so torch.compile
keeps them in its graph. A run decides its choice once, after a self-check of each kernel on its
own device (`select_kernels`).

  0  kernels                          the Triton kernels (their own map)
  1  dispatch, custom_ops             which implementation an op runs, KernelChoice; the launchers as
                                      custom ops (torch.ops.megatron_zh.*) with autograd and fake tensors
  1  blockwise_attention              causal attention with dropout a block of queries at a time (CPU)
  2  attention, layer_norm, softmax   the ops: the custom ops, or their PyTorch fallbacks
  3  self_check                       one op's Triton forward + backward against PyTorch, on a device
  4  selection                        --kernels auto|triton|torch -> the run's KernelChoice
"""

from megatron_zh.ops.attention import causal_attention
from megatron_zh.ops.dispatch import (
    OPS,
    Backend,
    KernelChoice,
    OpName,
    resolve_backend,
    triton_can_run,
    triton_installed,
    triton_runs_on,
)
from megatron_zh.ops.layer_norm import layer_norm
from megatron_zh.ops.selection import KernelCheckError, KernelSelection, agree, select_kernels
from megatron_zh.ops.self_check import CheckResult, KernelUse, check_kernels, self_check
from megatron_zh.ops.softmax import scaled_causal_softmax

__all__ = [
    "OPS",
    "Backend",
    "CheckResult",
    "KernelCheckError",
    "KernelChoice",
    "KernelSelection",
    "KernelUse",
    "OpName",
    "agree",
    "causal_attention",
    "check_kernels",
    "layer_norm",
    "resolve_backend",
    "scaled_causal_softmax",
    "select_kernels",
    "self_check",
    "triton_can_run",
    "triton_installed",
    "triton_runs_on",
]
