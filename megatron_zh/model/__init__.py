"""The GPT-2 model and its configuration."""

from megatron_zh.model.config import ATTENTION_IMPLS, PRESETS, GPT2Config, model_flops_per_token
from megatron_zh.model.gpt2 import GPT2Model, GPT2Output, masked_lm_loss
from megatron_zh.model.kv_cache import KVCache

__all__ = [
    "ATTENTION_IMPLS",
    "GPT2Config",
    "GPT2Model",
    "GPT2Output",
    "KVCache",
    "PRESETS",
    "masked_lm_loss",
    "model_flops_per_token",
]
