"""Checks against files and hardware, run once before anything heavy (process group, model, data indices).

Pure consistency checks (batch arithmetic, sequence length vs positions, schedule) already ran
while the config was built (config/arguments.py, config/deepspeed_config.py). Here: whether the
device can run the requested precision and optimizer, everything DeepSpeed would reject in its
config (config/deepspeed_preflight.py), the vocab and its fingerprint, the datasets and theirs (and
the one text normalisation they share), the
checkpoint directories (checkpointing/start_guard.py: --load exists, --save is writable and is
not overwritten by a fresh start, no complete checkpoint newer than the one to start from is left
to be overwritten) and the checkpoint to start from (complete, its vocab and shapes, every file
passing the restricted unpickler).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_zh.errors import ConfigError
from megatron_zh.log import get_logger
from megatron_zh.optim import uer_adamw_params
from megatron_zh.training.checkpointing.start import StartPoint, check_compatible, resolve_start
from megatron_zh.training.checkpointing.start_guard import (
    check_checkpoint_complete,
    check_load_exists,
    check_newer_checkpoints,
    check_not_overwriting,
    check_save_writable,
)
from megatron_zh.training.config.deepspeed_preflight import check_deepspeed_config
from megatron_zh.training.config.run_config import RunConfig

logger = get_logger(__name__)


@dataclass(frozen=True)
class Preflight:
    """What validation learned and the run needs."""

    vocab_fingerprint: str
    vocab_size: int
    pad_id: int  # the vocab's [PAD], which pads document-mode samples
    normalization: str  # the text normalisation every dataset of the run was tokenized with
    start: StartPoint


def check_vocab(run: RunConfig) -> tuple[str, int, int]:
    from megatron_zh.text.tokenizer import BertChineseTokenizer

    path = Path(run.train.vocab_file)
    if not path.is_file():
        raise ConfigError(f"vocab file {path} not found (pretrain.vocab_file / --vocab-file)")
    tokenizer = BertChineseTokenizer(path)
    if run.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"{path} has {tokenizer.vocab_size} tokens but model {run.train.model.preset!r} has only "
            f"{run.model.vocab_size} embeddings; set model_overrides.vocab_size to {tokenizer.vocab_size}"
        )
    if run.model.vocab_size > tokenizer.vocab_size:
        logger.warning(
            "model has %d embeddings for a %d-token vocab; the extra rows are never trained",
            run.model.vocab_size,
            tokenizer.vocab_size,
        )
    return tokenizer.fingerprint, tokenizer.vocab_size, tokenizer.pad


def check_data(run: RunConfig, vocab_fingerprint: str) -> str:
    """Every dataset prefix (validation sources included) has its .bin/.idx and was tokenized with this
    vocab and one text normalisation (their metadata sidecars); returns that normalisation."""
    from megatron_zh.data.datasets.blended_dataset import parse_data_path
    from megatron_zh.data.datasets.builder import common_normalization, open_indexed_dataset

    prefixes, _ = parse_data_path(list(run.train.data.data_path))
    prefixes += [prefix for _, prefix in run.train.data.validation_sources]
    for prefix in prefixes:
        open_indexed_dataset(prefix, vocab_fingerprint)
    return common_normalization(prefixes)


def check_device(run: RunConfig) -> None:
    precision = run.precision
    cuda = torch.cuda.is_available()
    if precision == "bf16" and not (cuda and torch.cuda.is_bf16_supported()):
        where = f"GPU {torch.cuda.get_device_name()}" if cuda else "this machine (no CUDA GPU)"
        raise ConfigError(
            f"{run.config_file} asks for bf16, which {where} cannot train in; pass --fp32 "
            "(or --fp16 on pre-Ampere GPUs), or use ds_configs/cpu_tiny.json on CPU"
        )
    if precision == "fp16" and not cuda:
        raise ConfigError(f"{run.config_file} asks for fp16, which needs a CUDA GPU; pass --fp32 on CPU")
    optimizer = run.deepspeed["optimizer"]
    compiled = optimizer["type"].lower() in ("adam", "adamw") and not optimizer["params"].get("torch_adam")
    if not cuda and compiled and uer_adamw_params(optimizer) is None:  # UER-py's AdamW is ours: nothing to build
        raise ConfigError(
            f'{run.config_file}: DeepSpeed\'s {optimizer["type"]} without "torch_adam": true builds a C++/CUDA '
            "extension; set optimizer.params.torch_adam to true (torch's AdamW, still ZeRO-partitioned)"
        )


def validate(run: RunConfig) -> Preflight:
    """All file and hardware checks; raises ConfigError / DataFormatError / CheckpointError."""
    check_device(run)
    check_deepspeed_config(run.deepspeed, run.config_file)
    fingerprint, vocab_size, pad_id = check_vocab(run)
    normalization = check_data(run, fingerprint)
    check_load_exists(run.train)
    check_save_writable(run.train.save)
    zero = run.zero_stage > 0  # whether a complete checkpoint of this run holds ZeRO optimizer files
    start = resolve_start(run.train, zero)
    check_not_overwriting(run.train, start, zero)
    check_newer_checkpoints(run.train, start, zero)
    check_compatible(start, run, fingerprint, normalization)
    check_checkpoint_complete(start, zero)
    return Preflight(
        vocab_fingerprint=fingerprint, vocab_size=vocab_size, pad_id=pad_id, normalization=normalization, start=start
    )
