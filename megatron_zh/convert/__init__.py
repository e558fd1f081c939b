"""Conversions between megatron_zh's model and other formats (Hugging Face GPT-2, UER-py).

0  hf_gpt2, uer_gpt2, model_card   the name and config maps; the model card
1  hf_import, uer                  a Hugging Face folder -> a checkpoint; UER-py both ways
2  loading                         a model and tokenizer from a checkpoint or an HF folder
3  hf_export                       a checkpoint -> a Hugging Face folder, verified
"""

from megatron_zh.convert.hf_gpt2 import from_hf_config, from_hf_state_dict, to_hf_config, to_hf_state_dict, weight_names

__all__ = ["from_hf_config", "from_hf_state_dict", "to_hf_config", "to_hf_state_dict", "weight_names"]
