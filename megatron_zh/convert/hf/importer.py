"""Hugging Face GPT-2 folder -> our model: read config.json, the weights and the vocab.

Accepts what `save_pretrained` writes and what the hub holds for uer/gpt2-*-chinese-*:
config.json, model.safetensors or pytorch_model.bin (or their sharded *.index.json forms),
vocab.txt, and tokenizer_config.json for do_lower_case (absent: true, as BERT-Chinese is trained). A folder
we exported also holds export_info.json: its vocab fingerprint must be the vocab.txt's (a swapped one is refused),
and it says the text normalisation the model's inputs need (absent: none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from megatron_zh.checkpoint.safety import safe_load
from megatron_zh.convert.hf.names import EXPORT_INFO_FILE, from_hf_config, from_hf_state_dict
from megatron_zh.convert.interface import ExternalModel
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.fileio import read_json_object
from megatron_zh.log import get_logger
from megatron_zh.text.normalization import NONE
from megatron_zh.text.tokenizer import vocab_fingerprint

logger = get_logger(__name__)

SAFETENSORS_FILE, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_FILE, TORCH_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
VOCAB_FILE = "vocab.txt"


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, CheckpointError)


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        return safe_load(path, mmap=False)  # pytorch_model.bin: a pickle, so the restricted unpickler
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exc:  # damaged files raise many different types
        raise CheckpointError(f"cannot read weights {path}: {type(exc).__name__}: {exc}") from None


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: single file or sharded (index.json), safetensors preferred."""
    for single, index in ((SAFETENSORS_FILE, SAFETENSORS_INDEX), (TORCH_FILE, TORCH_INDEX)):
        if (folder / single).is_file():
            return _load_weight_file(folder / single)
        if (folder / index).is_file():
            shards = sorted(set(_read_json(folder / index).get("weight_map", {}).values()))
            weights: dict[str, torch.Tensor] = {}
            for shard in shards:
                weights.update(_load_weight_file(folder / shard))
            return weights
    raise CheckpointError(
        f"{folder} has no {SAFETENSORS_FILE} or {TORCH_FILE} (nor a sharded index): not a Hugging Face model folder"
    )


def read_hf_folder(
    folder: Path, vocab_file: Path | None = None, options: dict[str, Any] | None = None
) -> ExternalModel:
    """Our config, float32 state dict and vocab from a Hugging Face GPT-2 folder (no options)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json: not a Hugging Face model folder")
    hf_config = _read_json(folder / "config.json")
    architectures = hf_config.get("architectures") or ["GPT2LMHeadModel"]
    if not set(architectures) & {"GPT2LMHeadModel", "GPT2Model"}:
        raise ConfigError(
            f"{folder / 'config.json'}: architectures {architectures} is not GPT-2; "
            "only GPT2LMHeadModel folders can be read"
        )
    try:
        model_config = from_hf_config(hf_config)
    except ConfigError as exc:
        raise ConfigError(f"{folder / 'config.json'}: {exc}") from None
    hf_state_dict = read_hf_weights(folder)
    state_dict = {name: tensor.float() for name, tensor in from_hf_state_dict(hf_state_dict, model_config).items()}

    vocab = Path(vocab_file) if vocab_file is not None else folder / VOCAB_FILE
    if not vocab.is_file():
        raise ConfigError(f"{vocab} not found: the folder has no {VOCAB_FILE}; pass --vocab-file")
    check_exported_vocab(folder, vocab_file)
    if vocab_file is not None and (folder / VOCAB_FILE).is_file():
        check_same_vocab(folder / VOCAB_FILE, vocab)
    tokenizer_config = folder / "tokenizer_config.json"
    lower_case = bool(_read_json(tokenizer_config).get("do_lower_case", True)) if tokenizer_config.is_file() else True
    export_info = folder / EXPORT_INFO_FILE
    normalization = str(_read_json(export_info).get("normalization", NONE)) if export_info.is_file() else NONE
    description = f"Hugging Face folder {folder.resolve()}"
    return ExternalModel(model_config, state_dict, vocab, lower_case, description, normalization)


def check_exported_vocab(folder: Path, vocab_file: Path | None) -> None:
    """A folder we exported records its vocab's fingerprint (export_info.json): its vocab.txt, and a --vocab-file
    given with it, must be that vocab. A vocab.txt swapped after the export would otherwise be read, and stamped
    on an imported checkpoint, as the model's own."""
    info = folder / EXPORT_INFO_FILE
    if not info.is_file():
        return  # not our export (the hub's folders have no record): nothing to compare with
    recorded = read_json_object(info, CheckpointError).get("vocab_fingerprint")
    if not isinstance(recorded, str):
        raise CheckpointError(f"{info} records no vocab_fingerprint; it is damaged: export the checkpoint again")
    checks = [("", folder / VOCAB_FILE, "put back the vocab.txt the export wrote, or export the checkpoint again")]
    if vocab_file is not None:
        checks.append(("--vocab-file ", Path(vocab_file), "drop --vocab-file to use the folder's own"))
    for flag, vocab, fix in checks:
        found = vocab_fingerprint(vocab) if vocab.is_file() else None
        if found is not None and found != recorded:
            raise CheckpointError(
                f"{flag}{vocab} is not the vocab the model in {folder} was exported with: its fingerprint is "
                f"{found}, {info.name} records {recorded}; {fix}"
            )


def check_same_vocab(own: Path, given: Path) -> None:
    """A --vocab-file given with a folder that has its own vocab.txt must be that vocab (same tokens, same ids).

    Another vocab maps every id to another token: perplexity in the tens of thousands, a checkpoint
    stamped with the wrong fingerprint.
    """
    own_fingerprint, given_fingerprint = vocab_fingerprint(own), vocab_fingerprint(given)
    if own_fingerprint != given_fingerprint:
        raise ConfigError(
            f"--vocab-file {given} is not the vocab of the model in {own.parent}: its fingerprint is "
            f"{given_fingerprint}, the folder's {own} has {own_fingerprint}; drop --vocab-file to use the "
            "folder's own"
        )
