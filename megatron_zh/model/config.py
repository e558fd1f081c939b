"""GPT-2 model configuration: one dataclass, named presets, validation at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from megatron_zh.errors import ConfigError
from megatron_zh.knobs import knob
from megatron_zh.validators import (
    BOOLEAN,
    FRACTION,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    Check,
    checked,
    field_problems,
    one_of,
    optional,
    raise_problems,
    validate_fields,
)

AttentionImpl = Literal["flash", "softmax", "torch"]
ATTENTION_IMPLS: tuple[AttentionImpl, ...] = get_args(AttentionImpl)
# The dtype a model trains in (its weights and activations; optimizer masters stay fp32 under bf16/fp16).
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
# How a loss asked for alone is computed from the last hidden states (model/lm_loss.py): "fused" chunk by
# chunk, never holding the [tokens, vocab] logits; "logits" makes them, then their cross-entropy. Same
# loss and gradients within float32 noise; the logits' memory is the difference.
LMLoss = Literal["fused", "logits"]
LM_LOSSES: tuple[LMLoss, ...] = get_args(LMLoss)


@dataclass
class GPT2Config:
    """Shape and regularisation of the GPT-2 model. Defaults are the "gpt2-distil" preset.

    attention_impl: "flash" (fused causal flash-attention kernel), "softmax" (matmul, fused
    scale+mask+softmax kernel, matmul: Megatron's classic path) or "torch"
    (`F.scaled_dot_product_attention`). Without CUDA the Triton choices run PyTorch code.
    """

    vocab_size: int = checked(POSITIVE_INT, 21128)
    max_position_embeddings: int = checked(POSITIVE_INT, 1024)
    num_layers: int = checked(POSITIVE_INT, 6)
    hidden_size: int = checked(POSITIVE_INT, 768)
    num_attention_heads: int = checked(POSITIVE_INT, 12)
    ffn_hidden_size: int = checked(POSITIVE_INT, 3072)
    hidden_dropout: float = checked(FRACTION, 0.1)
    attention_dropout: float = checked(FRACTION, 0.1)
    layernorm_epsilon: float = checked(POSITIVE_NUMBER, 1e-5)
    init_std: float = checked(POSITIVE_NUMBER, 0.02)
    attention_impl: AttentionImpl = checked(one_of(ATTENTION_IMPLS), "flash")
    activation_checkpointing: bool = checked(BOOLEAN, False)

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if not problems and self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        raise_problems("model config", problems)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPT2Config:
        """A named preset (see `PRESETS`), with any fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPT2Config:
        """Build from a plain dict (e.g. a checkpoint's saved config); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**d)


# UER-py's published Chinese GPT-2 family (BERT-Chinese vocab, 1024 positions), plus a tiny model
# that trains on two CPU ranks in about a minute.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-distil": {},
    "gpt2-base": dict(num_layers=12),
    "gpt2-medium": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, ffn_hidden_size=4096),
    "gpt2-large": dict(num_layers=36, hidden_size=1280, num_attention_heads=20, ffn_hidden_size=5120),
    "gpt2-xlarge": dict(num_layers=48, hidden_size=1600, num_attention_heads=25, ffn_hidden_size=6400),
    "gpt2-tiny": dict(
        num_layers=2, hidden_size=128, num_attention_heads=4, ffn_hidden_size=512, max_position_embeddings=256
    ),
}


MODEL = "model (pretrain block)"  # the flags' help group
GPT2_FIELDS = Check(lambda v: isinstance(v, dict), "an object of GPT2Config fields")


@dataclass(frozen=True)
class ModelChoice:
    """Which model a run trains: a preset and the fields it changes (the pretrain block's model knobs).

    Megatron's dropout flags, when set, win over both the preset and model_overrides, so
    `--hidden-dropout 0 --attention-dropout 0` makes any preset deterministic."""

    preset: str = knob("gpt2-distil", help="GPT2Config preset: gpt2-distil, gpt2-tiny, ...", group=MODEL, key="model")
    model_overrides: dict[str, Any] = knob(
        help="GPT2Config fields to change", check=GPT2_FIELDS, default_factory=dict, flag=False
    )
    hidden_dropout: float | None = knob(
        None,
        help="dropout on embeddings and residual branches (default: the preset's, 0.1 for gpt2-distil; 0: off)",
        check=optional(FRACTION),
        group=MODEL,
    )
    attention_dropout: float | None = knob(
        None,
        help="dropout on attention probabilities (default: the preset's, 0.1 for gpt2-distil; 0: off)",
        check=optional(FRACTION),
        group=MODEL,
    )
    lm_loss: LMLoss = knob(
        "fused",
        help="the LM head's loss: fused (chunk by chunk, never holding the [tokens, vocab] logits) or "
        "logits (the logits, then their cross-entropy); the same loss and gradients",
        check=one_of(LM_LOSSES),
        group=MODEL,
    )

    def __post_init__(self) -> None:
        validate_fields(self, "model choice")

    @property
    def overrides(self) -> dict[str, Any]:
        """GPT2Config fields to change from the preset: model_overrides, then the dropout knobs that are set."""
        dropouts = {"hidden_dropout": self.hidden_dropout, "attention_dropout": self.attention_dropout}
        return {**self.model_overrides, **{k: v for k, v in dropouts.items() if v is not None}}

    def build(self) -> GPT2Config:
        return GPT2Config.from_preset(self.preset, **self.overrides)


def model_flops_per_token(config: GPT2Config, seq_length: int) -> float:
    """Training FLOPs (forward + backward) per token, counting matrix multiplies only.

    Per layer and token the forward pass does 2*h*3h (QKV) + 2*h*h (attention output)
    + 2*2*h*f (MLP) multiply-adds times two, plus 2*s*h for q@k^T and 2*s*h for probs@v; the
    tied LM head adds 2*h*V. Backward costs twice the forward, so

        flops/token = 3 * (L * (8*h^2 + 4*h*f + 4*s*h) + 2*h*V)

    which for f = 4h is Megatron-LM's 72*L*h^2 * (1 + s/(6h) + V/(12*h*L)) per token (Narayanan
    et al., 2021). Conventions, as in Megatron and nanoGPT's MFU: attention counts the full
    s x s scores although causal kernels skip half of them; activation-checkpointing recompute
    is not counted (model FLOPs, not hardware FLOPs); embeddings, norms, softmax are ignored.
    """
    if seq_length < 1:
        raise ConfigError(f"seq_length must be positive, got {seq_length}")
    h, f, layers, vocab = config.hidden_size, config.ffn_hidden_size, config.num_layers, config.vocab_size
    per_layer = 8 * h * h + 4 * h * f + 4 * seq_length * h
    return 3.0 * (layers * per_layer + 2 * h * vocab)
