"""One entry point for generation and evaluation: a model and its tokenizer from either format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_zh.checkpoint.weights import LoadedCheckpoint, load_checkpoint_weights
from megatron_zh.convert.hf_import import read_hf_folder
from megatron_zh.errors import ConfigError
from megatron_zh.model import GPT2Config, GPT2Model
from megatron_zh.tokenizer import BertChineseTokenizer, check_fingerprint


@dataclass
class LoadedModel:
    model: GPT2Model  # eval mode, float32, on CPU (the caller moves it)
    tokenizer: BertChineseTokenizer
    source: str  # "megatron_zh checkpoint DIR/TAG" | "Hugging Face folder DIR"


def model_from_state_dict(config: GPT2Config, state_dict: dict[str, torch.Tensor]) -> GPT2Model:
    """GPT2Model(config) holding exactly `state_dict` (strict), float32, in eval mode."""
    model = GPT2Model(config)
    model.load_state_dict(state_dict, strict=True)
    return model.float().eval()


def checkpoint_tokenizer(checkpoint: LoadedCheckpoint, vocab_file: str | Path | None = None) -> BertChineseTokenizer:
    """The tokenizer the checkpoint was trained with: `vocab_file`, else its training vocab; fingerprints must match."""
    where = checkpoint.directory / checkpoint.tag
    if vocab_file is None:
        vocab_file = (checkpoint.client_state.train_config or {}).get("vocab_file")
        if vocab_file is None:
            raise ConfigError(f"checkpoint {where} does not name its vocab file; pass --vocab-file")
        if not Path(vocab_file).is_file():
            raise ConfigError(
                f"checkpoint {where} was trained with vocab {vocab_file}, which is not there "
                "(relative paths are taken from the current directory); pass --vocab-file"
            )
    tokenizer = BertChineseTokenizer(vocab_file)
    check_fingerprint(
        checkpoint.vocab_fingerprint,
        tokenizer.fingerprint,
        source=f"checkpoint {where}",
        fix=f"{vocab_file} is not the vocab it was trained with; pass that one with --vocab-file",
        error=ConfigError,
    )
    if tokenizer.vocab_size > checkpoint.model_config.vocab_size:
        raise ConfigError(
            f"{vocab_file} has {tokenizer.vocab_size} tokens but checkpoint {where} only "
            f"{checkpoint.model_config.vocab_size} embeddings"
        )
    return tokenizer


def load_model(
    *, checkpoint: str | None = None, tag: str | None = None, hf: str | None = None, vocab_file: str | None = None
) -> LoadedModel:
    """Our checkpoint (`checkpoint`, optional `tag`) or an HF GPT-2 folder (`hf`): exactly one of them."""
    if checkpoint is not None and hf is None:
        loaded = load_checkpoint_weights(checkpoint, tag)
        tokenizer = checkpoint_tokenizer(loaded, vocab_file)
        model = model_from_state_dict(loaded.model_config, loaded.state_dict)
        return LoadedModel(model, tokenizer, f"megatron_zh checkpoint {loaded.directory / loaded.tag}")
    if hf is None or checkpoint is not None:
        raise ConfigError("load a model from exactly one of a checkpoint directory or a Hugging Face folder")
    if tag is not None:
        raise ConfigError("a tag selects a checkpoint of a checkpoint directory; a Hugging Face folder has none")
    folder = read_hf_folder(hf, vocab_file)
    tokenizer = BertChineseTokenizer(folder.vocab_file, lower_case=folder.lower_case)
    if tokenizer.vocab_size > folder.model_config.vocab_size:
        raise ConfigError(
            f"{folder.vocab_file} has {tokenizer.vocab_size} tokens but the model in {hf} only "
            f"{folder.model_config.vocab_size} embeddings; it is not this model's vocab"
        )
    model = model_from_state_dict(folder.model_config, folder.state_dict)
    return LoadedModel(model, tokenizer, f"Hugging Face folder {hf}")
