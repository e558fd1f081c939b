"""A whole model's weights: read from a checkpoint pretrain_gpt.py wrote, or written as one it can start from.

Reading takes the full-precision master weights, not the bf16 copies in the model-states file
(master_weights.py reads the ZeRO shards), and checks them against the model config the checkpoint
records. Every converter (convert/) and the inference tools read checkpoints through here.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_zh.checkpoint.client_state import CHECKPOINT_FORMAT, ClientState, read_client_state
from megatron_zh.checkpoint.layout import CLIENT_STATE_FILE, LATEST_FILE, MODEL_STATES_FILE, read_latest_tag, tag_for
from megatron_zh.checkpoint.master_weights import read_fp32_weights
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.fileio import commit_directory, staging_directory
from megatron_zh.log import get_logger
from megatron_zh.model import GPT2Config, GPT2Model
from megatron_zh.text.normalization import NONE
from megatron_zh.text.tokenizer import BertChineseTokenizer, check_fingerprint

logger = get_logger(__name__)


@dataclass(frozen=True)
class LoadedCheckpoint:
    directory: Path
    tag: str
    model_config: GPT2Config
    state_dict: dict[str, torch.Tensor]  # our parameter names, float32, full (consolidated) tensors
    client_state: ClientState  # client_state.json content (no rng states)
    vocab_fingerprint: str
    weights_source: str  # "zero-fp32-master (N ranks)" | "module (fp32)" | ...


def model_state_keys(config: GPT2Config) -> list[str]:
    """The exact state_dict keys of GPT2Model(config), without allocating its weights."""
    with torch.device("meta"):
        return list(GPT2Model(config).state_dict())


def resolve_tag(directory: str | Path, tag: str | None = None) -> tuple[Path, str]:
    """(directory, tag) of a committed checkpoint, or CheckpointError saying what the directory is instead."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass the --save directory of a pretrain_gpt.py run")
    if tag is None:
        tag = read_latest_tag(directory)
        if tag is None:
            if (directory / MODEL_STATES_FILE).is_file():
                raise CheckpointError(
                    f"{directory} is one checkpoint's folder; pass the directory above it "
                    f"({directory.parent}) and --tag {directory.name}"
                )
            found = sorted(p.name for p in directory.glob("global_step*") if p.is_dir())
            hint = (
                f"it has {', '.join(found)} but no committed one (pass --tag to choose one anyway)"
                if found
                else "no global_step* folders either"
            )
            raise CheckpointError(f"{directory} is not a checkpoint directory: no `{LATEST_FILE}` file, {hint}")
    if not (directory / tag).is_dir():
        found = sorted(p.name for p in directory.glob("global_step*") if p.is_dir())
        raise CheckpointError(f"checkpoint {directory / tag} does not exist; tags there: {', '.join(found) or 'none'}")
    return directory, tag


def load_checkpoint_weights(directory: str | Path, tag: str | None = None) -> LoadedCheckpoint:
    """The consolidated float32 weights of checkpoint `tag` (default: the one `latest` names) in `directory`."""
    directory, tag = resolve_tag(directory, tag)
    where = directory / tag
    client_state = read_client_state(directory, tag)
    model_config = _model_config(client_state, where)
    state_dict, source = read_fp32_weights(where)

    expected = model_state_keys(model_config)
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: the weights do not fit its model_config (missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}); the checkpoint was not written by this version of "
            "megatron_zh or is damaged"
        )
    state_dict = {name: state_dict[name].contiguous() for name in expected}
    logger.info("read %s: %s, %.2f M parameters", where, source, sum(t.numel() for t in state_dict.values()) / 1e6)
    return LoadedCheckpoint(
        directory=directory,
        tag=tag,
        model_config=model_config,
        state_dict=state_dict,
        client_state=client_state,
        vocab_fingerprint=client_state.vocab_fingerprint,
        weights_source=source,
    )


def _model_config(client_state: ClientState, where: Path) -> GPT2Config:
    fmt = client_state.checkpoint_format
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where} has checkpoint_format {fmt!r}; this version reads {CHECKPOINT_FORMAT!r}")
    try:
        return GPT2Config.from_dict(client_state.model_config)
    except ConfigError as exc:
        raise ConfigError(f"{where}: cannot map its model_config to GPT-2: {exc}") from None


def write_checkpoint(
    directory: str | Path,
    model_config: GPT2Config,
    state_dict: dict[str, torch.Tensor],
    *,
    vocab_fingerprint: str,
    vocab_size: int,
    source: str,
    normalization: str = NONE,
    overwrite: bool = False,
) -> Path:
    """Write `state_dict` as checkpoint global_step0 of a new save directory `directory`.

    The layout is pretrain_gpt.py's (`latest`, global_step0/mp_rank_00_model_states.pt with the module
    and our client state, client_state.json) without optimizer files: start training from it with
    `pretrain_gpt.py --load DIR --finetune` (fresh optimizer, schedule and sample counter).
    The directory appears only once complete. Returns the checkpoint folder.
    """
    directory = Path(directory)
    expected = model_state_keys(model_config)
    if sorted(state_dict) != sorted(expected):
        missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
        raise CheckpointError(
            f"state dict does not fit the model config (missing {missing[:6]}, unexpected {unexpected[:6]})"
        )
    module = OrderedDict((name, state_dict[name].detach().to("cpu", torch.float32).contiguous()) for name in expected)
    tag = tag_for(0)
    client_state = ClientState(
        iteration=0,
        consumed_samples=0,
        model_config=model_config.to_dict(),
        vocab_fingerprint=vocab_fingerprint,
        vocab_size=vocab_size,
        normalization=normalization,
        train_config=None,
        world_size=1,
        precision="fp32",
        source=source,
        weights_only=True,  # no optimizer or schedule state: start from it with --finetune
        rng_states=[],
    )
    import deepspeed

    # What DeepSpeed's load_checkpoint(load_module_only=True) reads, beside our client state.
    states: dict[str, object] = {
        "module": module,
        "buffer_names": [],
        "param_shapes": [OrderedDict((name, t.shape) for name, t in module.items())],
        "frozen_param_shapes": None,
        "shared_params": {},
        "frozen_param_fragments": None,
        "optimizer": None,
        "lr_scheduler": None,
        "global_steps": 0,
        "global_samples": 0,
        "skipped_steps": 0,
        "dp_world_size": 1,
        "mp_world_size": 1,
        "ds_version": deepspeed.__version__,
        **client_state.to_dict(),
    }
    with staging_directory(directory, overwrite=overwrite) as staging:
        folder = staging / tag
        folder.mkdir()
        torch.save(states, folder / MODEL_STATES_FILE)
        sidecar = client_state.without_rng_states().to_dict()
        (folder / CLIENT_STATE_FILE).write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
        (staging / LATEST_FILE).write_text(tag, encoding="utf-8")
        commit_directory(staging, directory)
    logger.info(
        "wrote %s (%d layers, hidden %d, %.1f M parameters, vocab %s)",
        directory / tag,
        model_config.num_layers,
        model_config.hidden_size,
        sum(t.numel() for t in module.values()) / 1e6,
        vocab_fingerprint[:19],
    )
    return directory / tag


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
    # The text normalisation its data had: prompts and inputs get the same (checkpoints before it was recorded: none).
    tokenizer = BertChineseTokenizer(vocab_file, normalization=checkpoint.client_state.normalization or NONE)
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
