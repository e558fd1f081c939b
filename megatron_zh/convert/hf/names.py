"""Weight-name map between megatron_zh's `GPT2Model` and Hugging Face's `GPT2LMHeadModel`.

Hugging Face keeps GPT-2's `Conv1D` layout, [in_features, out_features], for the four
projections of a block; ours are `nn.Linear`, [out, in], so those weights are transposed.
Both fuse Q, K and V into one projection in the same [Q heads | K heads | V heads] order,
so no re-ordering is needed. The LM head is tied to the word embedding on both sides.
Also the name of the file an export records itself in (EXPORT_INFO_FILE), which both directions read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.log import get_logger
from megatron_zh.model.config import GPT2Config

if TYPE_CHECKING:
    from transformers import GPT2Config as HFGPT2Config

logger = get_logger(__name__)

# What an export records about itself (checkpoint, vocab fingerprint, self-check); the importer checks the vocab by it.
EXPORT_INFO_FILE = "export_info.json"

# (ours, Hugging Face, transposed)
_GLOBAL_NAMES = [
    ("embedding.word_embeddings.weight", "transformer.wte.weight", False),
    ("embedding.position_embeddings.weight", "transformer.wpe.weight", False),
    ("final_layernorm.weight", "transformer.ln_f.weight", False),
    ("final_layernorm.bias", "transformer.ln_f.bias", False),
]
_LAYER_NAMES = [
    ("input_layernorm.weight", "ln_1.weight", False),
    ("input_layernorm.bias", "ln_1.bias", False),
    ("self_attention.query_key_value.weight", "attn.c_attn.weight", True),
    ("self_attention.query_key_value.bias", "attn.c_attn.bias", False),
    ("self_attention.dense.weight", "attn.c_proj.weight", True),
    ("self_attention.dense.bias", "attn.c_proj.bias", False),
    ("post_attention_layernorm.weight", "ln_2.weight", False),
    ("post_attention_layernorm.bias", "ln_2.bias", False),
    ("mlp.dense_h_to_4h.weight", "mlp.c_fc.weight", True),
    ("mlp.dense_h_to_4h.bias", "mlp.c_fc.bias", False),
    ("mlp.dense_4h_to_h.weight", "mlp.c_proj.weight", True),
    ("mlp.dense_4h_to_h.bias", "mlp.c_proj.bias", False),
]
# Written by our export beside the model: what it was made from, and the text normalisation its inputs need.
EXPORT_INFO_FILE = "export_info.json"
HF_LM_HEAD = "lm_head.weight"
HF_WORD_EMBEDDINGS = "transformer.wte.weight"
# Causal-mask buffers that older Hugging Face GPT-2 checkpoints carry; they hold no weights.
_HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_GELU_TANH_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def weight_names(config: GPT2Config) -> list[tuple[str, str, bool]]:
    """Every (our name, Hugging Face name, transposed) pair for a model of this config."""
    names = list(_GLOBAL_NAMES)
    for i in range(config.num_layers):
        names += [(f"layers.{i}.{ours}", f"transformer.h.{i}.{hf}", t) for ours, hf, t in _LAYER_NAMES]
    return names


def _expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    h, f = config.hidden_size, config.ffn_hidden_size
    per_layer = {
        "input_layernorm.weight": (h,),
        "input_layernorm.bias": (h,),
        "self_attention.query_key_value.weight": (3 * h, h),
        "self_attention.query_key_value.bias": (3 * h,),
        "self_attention.dense.weight": (h, h),
        "self_attention.dense.bias": (h,),
        "post_attention_layernorm.weight": (h,),
        "post_attention_layernorm.bias": (h,),
        "mlp.dense_h_to_4h.weight": (f, h),
        "mlp.dense_h_to_4h.bias": (f,),
        "mlp.dense_4h_to_h.weight": (h, f),
        "mlp.dense_4h_to_h.bias": (h,),
    }
    shapes = {
        "embedding.word_embeddings.weight": (config.vocab_size, h),
        "embedding.position_embeddings.weight": (config.max_position_embeddings, h),
        "final_layernorm.weight": (h,),
        "final_layernorm.bias": (h,),
    }
    for i in range(config.num_layers):
        shapes.update({f"layers.{i}.{name}": shape for name, shape in per_layer.items()})
    return shapes


def _check_keys(found: set[str], expected: set[str], what: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        raise CheckpointError(
            f"{what} does not match the model config: "
            + (f"missing {show(missing)}; " if missing else "")
            + (f"unexpected {show(unexpected)}; " if unexpected else "")
            + "check that the config (layers, sizes) is the one these weights were trained with"
        )


def _check_shapes(ours: Mapping[str, torch.Tensor], config: GPT2Config, what: str) -> None:
    for name, shape in _expected_shapes(config).items():
        if tuple(ours[name].shape) != shape:
            raise CheckpointError(f"{what}: {name} has shape {tuple(ours[name].shape)}, the config implies {shape}")


def to_hf_state_dict(state_dict: Mapping[str, torch.Tensor], config: GPT2Config) -> dict[str, torch.Tensor]:
    """Our `GPT2Model.state_dict()` -> a `GPT2LMHeadModel` state dict (contiguous tensors).

    "lm_head.weight" is included and is the very tensor stored as "transformer.wte.weight".
    """
    names = weight_names(config)
    _check_keys(set(state_dict), {ours for ours, _, _ in names}, "state dict")
    _check_shapes(state_dict, config, "state dict")
    hf = {
        hf_name: (state_dict[ours].t() if transposed else state_dict[ours]).contiguous()
        for ours, hf_name, transposed in names
    }
    hf[HF_LM_HEAD] = hf[HF_WORD_EMBEDDINGS]
    return hf


def from_hf_state_dict(hf_state_dict: Mapping[str, torch.Tensor], config: GPT2Config) -> dict[str, torch.Tensor]:
    """A `GPT2LMHeadModel` (or `GPT2Model`) state dict -> ours, for `GPT2Model.load_state_dict`."""
    hf = {}
    for name, tensor in hf_state_dict.items():
        if name.endswith(_HF_BUFFER_SUFFIXES):
            continue
        hf[name if name.startswith("transformer.") or name == HF_LM_HEAD else f"transformer.{name}"] = tensor
    lm_head = hf.pop(HF_LM_HEAD, None)
    names = weight_names(config)
    _check_keys(set(hf), {hf_name for _, hf_name, _ in names}, "Hugging Face state dict")
    if lm_head is not None and not torch.equal(lm_head, hf[HF_WORD_EMBEDDINGS]):
        raise CheckpointError(
            "Hugging Face state dict has an LM head that differs from its word embedding; "
            "this model ties them and cannot hold untied weights"
        )
    ours = {ours: (hf[hf_name].t() if transposed else hf[hf_name]).contiguous() for ours, hf_name, transposed in names}
    _check_shapes(ours, config, "Hugging Face state dict")
    return ours


def to_hf_config(
    config: GPT2Config, *, bos_token_id: int = 101, eos_token_id: int = 102, pad_token_id: int = 0
) -> HFGPT2Config:
    """A `transformers.GPT2Config` with the same architecture (BERT-Chinese [CLS]/[SEP]/[PAD] ids)."""
    from transformers import GPT2Config as HFGPT2Config

    hf_config = HFGPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_position_embeddings,
        n_embd=config.hidden_size,
        n_layer=config.num_layers,
        n_head=config.num_attention_heads,
        n_inner=config.ffn_hidden_size,
        activation_function="gelu_new",
        resid_pdrop=config.hidden_dropout,
        embd_pdrop=config.hidden_dropout,
        attn_pdrop=config.attention_dropout,
        layer_norm_epsilon=config.layernorm_epsilon,
        initializer_range=config.init_std,
        scale_attn_weights=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"],
    )
    hf_config.tokenizer_class = "BertTokenizer"  # not a GPT2Config argument in transformers' signature
    return hf_config


def from_hf_config(hf_config: Any, **overrides: Any) -> GPT2Config:
    """Our config from a `transformers.GPT2Config` (or its config.json as a dict).

    Raises ConfigError for GPT-2 variants this model cannot express (another activation,
    cross-attention, per-layer attention scaling, untied head).
    """
    get = (
        hf_config.get
        if isinstance(hf_config, Mapping)
        else (lambda key, default=None: getattr(hf_config, key, default))
    )
    problems = []
    if get("model_type", "gpt2") != "gpt2":
        problems.append(f"model_type is {get('model_type')!r}, not 'gpt2'")
    if get("activation_function", "gelu_new") not in _GELU_TANH_NAMES:
        problems.append(
            f"activation_function {get('activation_function')!r} is not GELU's tanh form {_GELU_TANH_NAMES}"
        )
    for key, wanted in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
        ("tie_word_embeddings", True),
    ):
        if bool(get(key, wanted)) != wanted:
            problems.append(f"{key}={get(key)!r} is not supported (needs {wanted})")
    if problems:
        raise ConfigError("cannot import this Hugging Face GPT-2 config: " + "; ".join(problems))
    hidden_dropout = get("resid_pdrop", 0.1)
    if get("embd_pdrop", hidden_dropout) != hidden_dropout:
        logger.warning(
            "embd_pdrop=%s differs from resid_pdrop=%s; using %s for both (hidden_dropout)",
            get("embd_pdrop"),
            hidden_dropout,
            hidden_dropout,
        )
    hidden = get("n_embd", 768)
    fields = dict(
        vocab_size=get("vocab_size"),
        max_position_embeddings=get("n_positions", 1024),
        num_layers=get("n_layer", 12),
        hidden_size=hidden,
        num_attention_heads=get("n_head", 12),
        ffn_hidden_size=get("n_inner") or 4 * hidden,
        hidden_dropout=hidden_dropout,
        attention_dropout=get("attn_pdrop", 0.1),
        layernorm_epsilon=get("layer_norm_epsilon", 1e-5),
        init_std=get("initializer_range", 0.02),
    )
    return GPT2Config.from_dict({**fields, **overrides})
