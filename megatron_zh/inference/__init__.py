"""Text generation and evaluation with a trained model (ours or a Hugging Face export).

0  sampling, streaming, decoder   choosing the next token; ids -> text pieces as they come; the
                                  cached decoding loop
0  evaluation, runtime            loss and perplexity on a corpus; the tools' shared model flags and loading
1  generation                     generate(): prompts in, text out
"""

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
