"""UER-py GPT-2 model file (+ its config JSON) -> our model.

The model file is a state dict saved by UER-py's pretrain.py (--embedding word_pos --encoder
transformer --mask causal --target lm --tie_weights), read with PyTorch's restricted unpickler; its
sizes come from UER-py's config JSON, or from the tensors and the head count. Names and numerics:
names.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_zh.checkpoint.safety import safe_load
from megatron_zh.convert.interface import ExternalModel
from megatron_zh.convert.uer.names import config_from_tensors, config_from_uer, from_uer_state_dict
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.fileio import read_json_object
from megatron_zh.knobs import flag_name, knob
from megatron_zh.text.tokenizer import BertChineseTokenizer
from megatron_zh.validators import POSITIVE_INT, optional, validate_fields


@dataclass(frozen=True)
class UERImportOptions:
    uer_config: str | None = knob(None, help="its UER-py config (models/gpt2/*.json)", metavar="CONFIG.json")
    num_attention_heads: int | None = knob(
        None, help="heads per layer, when there is no --uer-config (12 for distil)", check=optional(POSITIVE_INT)
    )

    def __post_init__(self) -> None:
        validate_fields(self, "UER-py import options", label=flag_name)


def read_uer_config(path: str | Path) -> dict[str, Any]:
    return read_json_object(path, ConfigError, what="UER-py config ")


def load_uer_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A UER-py model file's state dict; only tensors and containers are unpickled (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"UER-py model {path} not found")
    try:
        weights = safe_load(path, mmap=False)  # the one restricted loader, with the checkpoint allowlist
    except CheckpointError as exc:
        raise CheckpointError(f"cannot read UER-py model {path} as a state dict of tensors: {exc}") from None
    if not isinstance(weights, dict) or not all(isinstance(k, str) for k in weights):
        raise CheckpointError(f"UER-py model {path} holds a {type(weights).__name__}, not a state dict")
    return weights


def read_uer_model(path: Path, vocab_file: Path | None, options: dict[str, Any]) -> ExternalModel:
    """Our config and float32 state dict from a UER-py model file and its config (options: uer_config, or
    num_attention_heads with the sizes read from the tensors). The file carries no vocab: `vocab_file` must be
    the one it was trained with (UER-py sizes the embedding by it, so the counts must be equal)."""
    chosen = UERImportOptions(**options)
    uer_config, num_attention_heads = chosen.uer_config, chosen.num_attention_heads
    if vocab_file is None:
        raise ConfigError(f"a UER-py model file carries no vocab: pass --vocab-file, the vocab {path} was trained with")
    weights = load_uer_weights(path)
    if uer_config is not None:
        saved = read_uer_config(uer_config)
        if num_attention_heads is not None and num_attention_heads != saved.get("heads_num"):
            raise ConfigError(
                f"--num-attention-heads {num_attention_heads} contradicts heads_num {saved.get('heads_num')} "
                f"in {uer_config}; pass one of them"
            )
        word = weights.get("embedding.word.embedding.weight")
        vocab_size = word.shape[0] if isinstance(word, torch.Tensor) and word.dim() == 2 else 1
        try:
            config = config_from_uer(saved, vocab_size)
        except ConfigError as exc:
            raise ConfigError(f"{uer_config}: {exc}") from None
    elif num_attention_heads is None:
        raise ConfigError(
            "without --uer-config the sizes are read from the tensors, but the number of attention heads "
            "is not in them: pass --num-attention-heads (12 for gpt2-distil) or --uer-config"
        )
    else:
        config = config_from_tensors(weights, num_attention_heads)
    try:
        state_dict = from_uer_state_dict(weights, config)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    tokenizer = BertChineseTokenizer(vocab_file)  # UER-py's BertTokenizer lower-cases, as ours
    if tokenizer.vocab_size != config.vocab_size:
        raise ConfigError(
            f"{vocab_file} has {tokenizer.vocab_size} tokens but {path} has {config.vocab_size} "
            "word embeddings: UER-py sizes the embedding by its vocab, so this is not the model's vocab"
        )
    return ExternalModel(config, state_dict, Path(vocab_file), True, f"UER-py model {Path(path).resolve()}")
