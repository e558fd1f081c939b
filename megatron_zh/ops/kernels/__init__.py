"""Triton kernels behind `megatron_zh.ops`. Importing this package needs `triton` but no GPU.

All kernels are decorated when this package is imported, so they are all built for the same
target: Triton's CPU interpreter when TRITON_INTERPRET=1 was set by then, the GPU otherwise.
Nothing here touches the CUDA driver until a kernel is launched on a CUDA tensor.

  0  common, attention_tiles                           launch helpers, autotuning; attention tiles and dropout
  1  attention_fwd, attention_bwd, layer_norm, softmax  the kernels (layer norm and softmax with their launchers)
  2  attention                                         the flash-attention launchers
  3  compile_check                                     compile every kernel for a GPU arch without a GPU
"""

from megatron_zh.ops.kernels import attention, layer_norm, softmax
from megatron_zh.ops.kernels.common import INTERPRETED

__all__ = ["INTERPRETED", "attention", "layer_norm", "softmax"]
