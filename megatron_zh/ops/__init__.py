"""Fused GPU ops with Triton forward and backward kernels and PyTorch fallbacks off-GPU.

Every op takes `backend="auto" | "triton" | "torch"`; see `megatron_zh.ops.dispatch`.

  0  kernels                          the Triton kernels (their own map)
  1  dispatch                         which implementation an op runs
  2  attention, layer_norm, softmax   the ops: autograd functions over the kernels, and their fallbacks
"""

from megatron_zh.ops.attention import causal_attention
from megatron_zh.ops.dispatch import Backend, resolve_backend, triton_can_run, triton_installed
from megatron_zh.ops.layer_norm import layer_norm
from megatron_zh.ops.softmax import scaled_causal_softmax

__all__ = [
    "Backend",
    "causal_attention",
    "layer_norm",
    "resolve_backend",
    "scaled_causal_softmax",
    "triton_can_run",
    "triton_installed",
]
