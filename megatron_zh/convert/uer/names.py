"""Weight names and config JSON of UER-py's GPT-2 (`--embedding word_pos --encoder transformer --target lm`).

UER-py keeps Q, K and V as three `nn.Linear` layers (`self_attn.linear_layers.{0,1,2}`: query, key,
value, each [out, in]); ours fuse them into one [Q | K | V] projection, so import concatenates
along the output dimension and export splits it. Every other weight keeps its layout (both are
`nn.Linear`). UER-py's LayerNorm calls its scale and shift `gamma` / `beta`.

The weights carry over exactly; the numerics do not quite. UER-py's LayerNorm is
`gamma * (x - mean) / (std + eps) + beta` with the *unbiased* standard deviation and eps 1e-6
outside the square root; ours (and Hugging Face's) is `(x - mean) / sqrt(var + eps)` with the
biased variance. For hidden 768 the two differ by a factor of about sqrt(768/767) = 1 + 6.5e-4
per LayerNorm; UER-py's own Hugging Face conversion ignores the same difference
(tests/test_uer.py measures what it does to the logits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.model.config import GPT2Config

UER_WORD_EMBEDDINGS = "embedding.word.embedding.weight"
UER_POSITION_EMBEDDINGS = "embedding.pos.embedding.weight"
UER_LM_HEAD = "target.lm.output_layer.weight"  # tied: equal to the word embedding
UER_LAYER_PREFIX = "encoder.transformer."

# (ours, UER-py names concatenated along dim 0 to make it)
_GLOBAL_NAMES: list[tuple[str, tuple[str, ...]]] = [
    ("embedding.word_embeddings.weight", (UER_WORD_EMBEDDINGS,)),
    ("embedding.position_embeddings.weight", (UER_POSITION_EMBEDDINGS,)),
    ("final_layernorm.weight", ("encoder.layer_norm.gamma",)),
    ("final_layernorm.bias", ("encoder.layer_norm.beta",)),
]
_QKV = tuple(f"self_attn.linear_layers.{j}" for j in range(3))  # query, key, value
_LAYER_NAMES: list[tuple[str, tuple[str, ...]]] = [
    ("input_layernorm.weight", ("layer_norm_1.gamma",)),
    ("input_layernorm.bias", ("layer_norm_1.beta",)),
    ("self_attention.query_key_value.weight", tuple(f"{n}.weight" for n in _QKV)),
    ("self_attention.query_key_value.bias", tuple(f"{n}.bias" for n in _QKV)),
    ("self_attention.dense.weight", ("self_attn.final_linear.weight",)),
    ("self_attention.dense.bias", ("self_attn.final_linear.bias",)),
    ("post_attention_layernorm.weight", ("layer_norm_2.gamma",)),
    ("post_attention_layernorm.bias", ("layer_norm_2.beta",)),
    ("mlp.dense_h_to_4h.weight", ("feed_forward.linear_1.weight",)),
    ("mlp.dense_h_to_4h.bias", ("feed_forward.linear_1.bias",)),
    ("mlp.dense_4h_to_h.weight", ("feed_forward.linear_2.weight",)),
    ("mlp.dense_4h_to_h.bias", ("feed_forward.linear_2.bias",)),
]

# What the published distil model's run passed to UER-py (models/gpt2/distil_config.json plus the
# pretrain.py flags of its model card); written into an exported config, checked on import.
UER_ARCHITECTURE: dict[str, Any] = {
    "hidden_act": "gelu_fast",
    "data_processor": "lm",  # UER-py's LmDataset: what its preprocess.py / pretrain.py read for this model
    "embedding": ["word", "pos"],
    "remove_embedding_layernorm": True,
    "encoder": "transformer",
    "mask": "causal",
    "layernorm_positioning": "pre",
    "target": ["lm"],
    "tie_weights": True,
}
# Values an imported config may hold for each architecture key: anything else is another model.
_ACCEPTED: dict[str, tuple[Any, ...]] = {
    "hidden_act": ("gelu_fast",),
    "data_processor": ("lm",),
    "embedding": (["word", "pos"], "word_pos"),
    "remove_embedding_layernorm": (True,),
    "encoder": ("transformer",),
    "mask": ("causal",),
    "layernorm_positioning": ("pre",),
    "target": (["lm"], "lm"),
    "tie_weights": (True,),
}
# UER-py's `dropout` is the one rate it applies everywhere (embedding, attention, residual).
_SIZE_KEYS = ("emb_size", "hidden_size", "heads_num", "layers_num", "feedforward_size", "max_seq_length")


def weight_names(config: GPT2Config) -> list[tuple[str, tuple[str, ...]]]:
    """Every (our name, UER-py names) pair for a model of this config (lm head excluded: it is tied)."""
    names = list(_GLOBAL_NAMES)
    for i in range(config.num_layers):
        prefix = f"{UER_LAYER_PREFIX}{i}."
        names += [(f"layers.{i}.{ours}", tuple(prefix + n for n in uer)) for ours, uer in _LAYER_NAMES]
    return names


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in a UER-py state dict of this config, in UER-py's order (its modules')."""
    h, f, v, p = config.hidden_size, config.ffn_hidden_size, config.vocab_size, config.max_position_embeddings
    per_layer = {
        **{f"{n}.{w}": (h, h) if w == "weight" else (h,) for n in _QKV for w in ("weight", "bias")},
        "self_attn.final_linear.weight": (h, h),
        "self_attn.final_linear.bias": (h,),
        "layer_norm_1.gamma": (h,),
        "layer_norm_1.beta": (h,),
        "feed_forward.linear_1.weight": (f, h),
        "feed_forward.linear_1.bias": (f,),
        "feed_forward.linear_2.weight": (h, f),
        "feed_forward.linear_2.bias": (h,),
        "layer_norm_2.gamma": (h,),
        "layer_norm_2.beta": (h,),
    }
    shapes: dict[str, tuple[int, ...]] = {UER_WORD_EMBEDDINGS: (v, h), UER_POSITION_EMBEDDINGS: (p, h)}
    for i in range(config.num_layers):
        shapes.update({f"{UER_LAYER_PREFIX}{i}.{name}": shape for name, shape in per_layer.items()})
    shapes.update({"encoder.layer_norm.gamma": (h,), "encoder.layer_norm.beta": (h,), UER_LM_HEAD: (v, h)})
    return shapes


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")


def check_uer_state_dict(uer: Mapping[str, torch.Tensor], config: GPT2Config, what: str) -> None:
    """Exactly the keys and shapes `config` implies, and a head tied to the word embedding; else CheckpointError."""
    shapes = expected_shapes(config)
    missing, unexpected = sorted(set(shapes) - set(uer)), sorted(set(uer) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"{what} does not match a UER-py GPT-2 of {config.num_layers} layers: "
            + (f"missing {_show(missing)}; " if missing else "")
            + (f"unknown {_show(unexpected)}; " if unexpected else "")
            + "it is not a UER-py GPT-2 (--embedding word_pos --encoder transformer --target lm) "
            "of this config, or the config is wrong"
        )
    for name, shape in shapes.items():
        tensor = uer[name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise CheckpointError(f"{what}: {name} is {type(tensor).__name__}, not a floating-point tensor")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{what}: {name} has shape {tuple(tensor.shape)}, the config implies {shape}")
    if not torch.equal(uer[UER_LM_HEAD], uer[UER_WORD_EMBEDDINGS]):
        raise CheckpointError(
            f"{what}: {UER_LM_HEAD} differs from {UER_WORD_EMBEDDINGS}; this model ties its LM head to the "
            "word embedding (UER-py's --tie_weights) and cannot hold an untied one"
        )


def from_uer_state_dict(uer: Mapping[str, torch.Tensor], config: GPT2Config) -> dict[str, torch.Tensor]:
    """A UER-py GPT-2 state dict -> ours (float32, contiguous), checked against `config`."""
    check_uer_state_dict(uer, config, "UER-py state dict")
    return {ours: torch.cat([uer[n] for n in names]).float().contiguous() for ours, names in weight_names(config)}


def to_uer_state_dict(state_dict: Mapping[str, torch.Tensor], config: GPT2Config) -> dict[str, torch.Tensor]:
    """Our state dict -> UER-py's, in the order UER-py's state_dict() lists them, each tensor its own storage.

    `target.lm.output_layer.weight` is written as a copy of the word embedding: UER-py's
    `load_state_dict` expects the key, and a shared storage would make torch.load tie them on
    our side of the round trip only by accident.
    """
    uer: dict[str, torch.Tensor] = {}
    for ours, names in weight_names(config):
        parts = state_dict[ours].chunk(len(names)) if len(names) > 1 else (state_dict[ours],)
        uer.update({name: part.detach().clone().contiguous() for name, part in zip(names, parts)})
    uer[UER_LM_HEAD] = uer[UER_WORD_EMBEDDINGS].clone()
    check_uer_state_dict(uer, config, "converted state dict")
    return {name: uer[name] for name in expected_shapes(config)}


def config_from_uer(uer_config: Mapping[str, Any], vocab_size: int, **overrides: Any) -> GPT2Config:
    """Our model config from UER-py's config JSON; ConfigError for what our GPT-2 cannot express.

    UER-py's config has no vocabulary size (it comes from the vocab file): pass the embedding's rows.
    """
    problems = [
        f"{key} {uer_config[key]!r} (needs {' or '.join(repr(v) for v in accepted)})"
        for key, accepted in _ACCEPTED.items()
        if key in uer_config and uer_config[key] not in accepted
    ]
    missing = [key for key in _SIZE_KEYS if key not in uer_config and key != "emb_size"]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if not missing and uer_config.get("emb_size", uer_config["hidden_size"]) != uer_config["hidden_size"]:
        problems.append(f"emb_size {uer_config['emb_size']} differs from hidden_size {uer_config['hidden_size']}")
    if problems:
        raise ConfigError("cannot import this UER-py config: " + "; ".join(problems))
    dropout = uer_config.get("dropout", 0.1)
    fields = dict(
        vocab_size=vocab_size,
        max_position_embeddings=uer_config["max_seq_length"],
        num_layers=uer_config["layers_num"],
        hidden_size=uer_config["hidden_size"],
        num_attention_heads=uer_config["heads_num"],
        ffn_hidden_size=uer_config["feedforward_size"],
        hidden_dropout=dropout,
        attention_dropout=dropout,
    )
    return GPT2Config.from_dict({**fields, **overrides})


def config_from_tensors(uer: Mapping[str, torch.Tensor], num_attention_heads: int, **overrides: Any) -> GPT2Config:
    """Our model config from the tensors' shapes; the head count is not in them and must be given."""
    for name in (UER_WORD_EMBEDDINGS, UER_POSITION_EMBEDDINGS, f"{UER_LAYER_PREFIX}0.feed_forward.linear_1.weight"):
        if name not in uer or getattr(uer[name], "dim", lambda: 0)() != 2:
            raise CheckpointError(
                f"UER-py state dict has no 2-D {name}: cannot infer the model's sizes from it "
                "(is it a UER-py GPT-2? pass --uer-config if it is)"
            )
    vocab, hidden = uer[UER_WORD_EMBEDDINGS].shape
    layers = 0
    while any(key.startswith(f"{UER_LAYER_PREFIX}{layers}.") for key in uer):
        layers += 1
    fields = dict(
        vocab_size=vocab,
        max_position_embeddings=uer[UER_POSITION_EMBEDDINGS].shape[0],
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=num_attention_heads,
        ffn_hidden_size=uer[f"{UER_LAYER_PREFIX}0.feed_forward.linear_1.weight"].shape[0],
    )
    return GPT2Config.from_dict({**fields, **overrides})


def to_uer_config(config: GPT2Config) -> dict[str, Any]:
    """UER-py's config JSON for this model (what `--config_path` reads), architecture flags included."""
    if config.hidden_dropout != config.attention_dropout:
        raise ConfigError(
            f"UER-py has one dropout rate; this model has hidden_dropout {config.hidden_dropout} and "
            f"attention_dropout {config.attention_dropout}"
        )
    return {
        "emb_size": config.hidden_size,
        "feedforward_size": config.ffn_hidden_size,
        "hidden_size": config.hidden_size,
        "heads_num": config.num_attention_heads,
        "layers_num": config.num_layers,
        "max_seq_length": config.max_position_embeddings,
        "dropout": config.hidden_dropout,
        **UER_ARCHITECTURE,
    }


# Said by both tools: the one numerical difference a user of the converted model should know about.
LAYER_NORM_NOTE = (
    "UER-py's LayerNorm divides by (unbiased std + 1e-6), ours and Hugging Face's by sqrt(biased var + eps): "
    "the weights are the same, the logits differ slightly (README: Coming from UER-py)"
)
