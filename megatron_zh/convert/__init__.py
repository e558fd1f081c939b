"""Conversions between megatron_zh's model and other formats (Hugging Face GPT-2)."""

from megatron_zh.convert.hf_gpt2 import from_hf_config, from_hf_state_dict, to_hf_config, to_hf_state_dict, weight_names

__all__ = ["from_hf_config", "from_hf_state_dict", "to_hf_config", "to_hf_state_dict", "weight_names"]
