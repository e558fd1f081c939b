"""The GPT-2 model and its configuration.

0  config                 GPT2Config (presets, validation), Precision, model FLOPs per token
1  kv_cache, kernel_uses  keys and values kept between forward passes, for decoding; the fused-op
                          calls a training step makes, for the kernel self-check
1  lm_loss                the tied LM head + cross-entropy chunk by chunk, never holding the logits
2  gpt2                   GPT2Model: pre-LayerNorm blocks, a tied LM head, the masked loss; one forward pass
"""

from megatron_zh.model.config import ATTENTION_IMPLS, LM_LOSSES, PRESETS, GPT2Config, LMLoss, model_flops_per_token
from megatron_zh.model.gpt2 import GPT2Model, GPT2Output, masked_lm_loss
from megatron_zh.model.kernel_uses import kernel_uses
from megatron_zh.model.kv_cache import KVCache
from megatron_zh.model.lm_loss import lm_head_loss

__all__ = [
    "ATTENTION_IMPLS",
    "GPT2Config",
    "GPT2Model",
    "GPT2Output",
    "KVCache",
    "LMLoss",
    "LM_LOSSES",
    "PRESETS",
    "kernel_uses",
    "lm_head_loss",
    "masked_lm_loss",
    "model_flops_per_token",
]
