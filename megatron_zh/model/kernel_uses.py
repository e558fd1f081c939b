"""The fused-op calls a training step of a GPT-2 config makes, at their shapes: what the kernel self-check runs."""

from __future__ import annotations

from megatron_zh.model.config import GPT2Config
from megatron_zh.ops import KernelUse


def kernel_uses(config: GPT2Config, micro_batch: int, seq_length: int) -> list[KernelUse]:
    """One `KernelUse` per distinct fused kernel the model runs in training and evaluation.

    Every layer norm is [micro_batch, seq, hidden]. Flash attention runs without dropout in
    evaluation and, when the config has attention dropout, with it in training: a different
    compiled kernel, so both are checked. The "softmax" impl runs the fused softmax on the
    [b, heads, seq, seq] scores; the "torch" impl calls no fused attention op.
    """
    uses = [KernelUse("layer_norm", (micro_batch, seq_length, config.hidden_size))]
    heads = (micro_batch, config.num_attention_heads, seq_length)
    if config.attention_impl == "flash":
        uses.append(KernelUse("causal_attention", (*heads, config.head_dim)))
        if config.attention_dropout > 0.0:
            uses.append(KernelUse("causal_attention", (*heads, config.head_dim), config.attention_dropout))
    elif config.attention_impl == "softmax":
        uses.append(KernelUse("scaled_causal_softmax", (*heads, seq_length)))
    return uses
