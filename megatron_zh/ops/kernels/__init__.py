"""Triton kernels behind `megatron_zh.ops`. Importing this package needs `triton` but no GPU.

All kernels are decorated when this package is imported, so they are all built for the same
target: Triton's CPU interpreter when TRITON_INTERPRET=1 was set by then, the GPU otherwise.
Nothing here touches the CUDA driver until a kernel is launched on a CUDA tensor.
"""

from megatron_zh.ops.kernels import attention, layer_norm, softmax
from megatron_zh.ops.kernels.common import INTERPRETED

__all__ = ["INTERPRETED", "attention", "layer_norm", "softmax"]
