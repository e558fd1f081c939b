"""UER-py GPT-2 model file <-> our checkpoints.

Import: a UER-py `.bin` (a state dict, read with PyTorch's restricted unpickler) plus its config
JSON (or the head count, the rest read from the tensor shapes) becomes a save directory holding
global_step0, written by the same code as the Hugging Face import (checkpoint/weights.py).
Export: a checkpoint's fp32 master weights become a UER-py state dict and config JSON that
UER-py's scripts (`--load_model_path`, `--config_path`) load unchanged. Names and numerics: uer_gpt2.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_zh.checkpoint.safety import safe_load
from megatron_zh.checkpoint.weights import load_checkpoint_weights, write_checkpoint
from megatron_zh.convert.uer_gpt2 import (
    config_from_tensors,
    config_from_uer,
    from_uer_state_dict,
    to_uer_config,
    to_uer_state_dict,
)
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.fileio import atomic_write, read_json_object
from megatron_zh.log import get_logger
from megatron_zh.model import GPT2Config
from megatron_zh.paths import refuse_overlap
from megatron_zh.tokenizer import BertChineseTokenizer

logger = get_logger(__name__)

# Said by both tools: the one numerical difference a user of the converted model should know about.
LAYER_NORM_NOTE = (
    "UER-py's LayerNorm divides by (unbiased std + 1e-6), ours and Hugging Face's by sqrt(biased var + eps): "
    "the weights are the same, the logits differ slightly (README: Coming from UER-py)"
)


@dataclass(frozen=True)
class UERModel:
    path: Path
    model_config: GPT2Config
    state_dict: dict[str, torch.Tensor]  # our names, float32


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


def read_uer_model(
    path: str | Path, *, uer_config: str | Path | None = None, num_attention_heads: int | None = None
) -> UERModel:
    """Our config and float32 state dict from a UER-py model file and its config (or the head count)."""
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
    return UERModel(Path(path), config, state_dict)


def import_from_uer(
    path: str | Path,
    output: str | Path,
    *,
    vocab_file: str | Path,
    uer_config: str | Path | None = None,
    num_attention_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a UER-py GPT-2 into a checkpoint directory pretrain_gpt.py --load ... --finetune starts from."""
    refuse_overlap(output, [("the UER-py model", path), ("--vocab-file", vocab_file), ("--uer-config", uer_config)])
    model = read_uer_model(path, uer_config=uer_config, num_attention_heads=num_attention_heads)
    tokenizer = BertChineseTokenizer(vocab_file)  # UER-py's BertTokenizer lower-cases, as ours
    if tokenizer.vocab_size != model.model_config.vocab_size:
        raise ConfigError(
            f"{vocab_file} has {tokenizer.vocab_size} tokens but {path} has {model.model_config.vocab_size} "
            "word embeddings: UER-py sizes the embedding by its vocab, so this is not the model's vocab"
        )
    folder = write_checkpoint(
        output,
        model.model_config,
        model.state_dict,
        vocab_fingerprint=tokenizer.fingerprint,
        vocab_size=tokenizer.vocab_size,
        source=f"UER-py model {Path(path).resolve()}",
        overwrite=overwrite,
    )
    return folder


@dataclass(frozen=True)
class UERExport:
    model_file: Path
    config_file: Path
    checkpoint: str  # DIR/TAG
    weights_source: str
    parameters: int


def default_config_path(model_file: Path) -> Path:
    """MODEL.bin -> MODEL.json beside it (UER-py's models/ folder keeps the two side by side)."""
    return model_file.with_suffix(".json")


def export_to_uer(
    checkpoint: str | Path,
    output: str | Path,
    *,
    tag: str | None = None,
    config_output: str | Path | None = None,
    overwrite: bool = False,
) -> UERExport:
    """Write checkpoint `tag` (default `latest`) as a UER-py model file and config JSON, each atomically."""
    output = Path(output)
    config_path = Path(config_output) if config_output is not None else default_config_path(output)
    if output.resolve() == config_path.resolve():
        raise ConfigError(f"the model file and the config would both be {output}; pass --uer-config-output")
    for path in (output, config_path):
        if path.is_dir():
            raise ConfigError(f"output {path} is a directory; name a file (e.g. {path / 'model.bin'})")
        if path.exists() and not overwrite:
            raise ConfigError(f"output {path} exists; pass --overwrite to replace it")
    loaded = load_checkpoint_weights(checkpoint, tag)
    folder = (loaded.directory / loaded.tag).resolve()
    if any(folder in path.resolve().parents for path in (output, config_path)):
        raise ConfigError(f"output would write into checkpoint {loaded.directory / loaded.tag}; choose another path")
    uer = to_uer_state_dict(loaded.state_dict, loaded.model_config)
    uer_config = to_uer_config(loaded.model_config)
    with atomic_write(output, "wb") as f:
        torch.save(uer, f)
    with atomic_write(config_path) as f:
        f.write(json.dumps(uer_config, indent=2) + "\n")
    logger.info("wrote %s and %s from %s (%s)", output, config_path, loaded.directory / loaded.tag, LAYER_NORM_NOTE)
    return UERExport(
        model_file=output,
        config_file=config_path,
        checkpoint=str(loaded.directory / loaded.tag),
        weights_source=loaded.weights_source,
        parameters=sum(t.numel() for t in loaded.state_dict.values()),
    )
