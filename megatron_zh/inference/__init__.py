"""Text generation and evaluation with a trained model (ours or a Hugging Face export)."""

from megatron_zh.inference.generation import (
    Generation,
    GenerationConfig,
    encode_prompt,
    generate,
    generate_token_ids,
    stream_text,
)
from megatron_zh.inference.sampling import SamplingConfig, choose_tokens, filter_logits

__all__ = [
    "Generation",
    "GenerationConfig",
    "SamplingConfig",
    "choose_tokens",
    "encode_prompt",
    "filter_logits",
    "generate",
    "generate_token_ids",
    "stream_text",
]
