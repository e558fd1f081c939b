"""Read the weights of a checkpoint pretrain_gpt.py wrote, and write one pretrain_gpt.py can start from.

Reading takes the full-precision master weights, not the copies in the model-states file: under
bf16 DeepSpeed saves the module in bf16, while ZeRO keeps the fp32 masters partitioned over the
data-parallel ranks in the optimizer files (see megatron_zh/training/checkpointing.py for the
layout). Facts about those files, as DeepSpeed 0.19 writes them for ZeRO stage 1/2:

* mp_rank_00_model_states.pt holds "param_shapes": one ordered {name: shape} per optimizer
  parameter group, in the order the parameters were flattened into the group.
* [bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt holds, under "optimizer_state_dict",
  "single_partition_of_fp32_groups": rank r's contiguous slice of each group's flat fp32 vector,
  and "partition_count": the number of ranks per group. Concatenated in rank order the slices are
  the whole flat group: the parameters back to back, each optionally followed by
  "param_alignment_paddings"[group][i] elements, and the group padded at its end to a multiple of
  the alignment ("group_paddings", non-zero in the last rank's file only).
* Plain ZeRO files also carry "zero_stage"; BF16_Optimizer's files (bf16 with fp32 gradient
  accumulation under ZeRO-1) do not, and are named bf16_zero_pp_rank_...

The result is checked against the module copy (it must be the masters rounded to the module's
dtype), so a mis-read shard cannot go unnoticed.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_zh.convert.output import commit_directory, staging_directory
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.log import get_logger
from megatron_zh.model import GPT2Config, GPT2Model
from megatron_zh.training.checkpointing import (
    CHECKPOINT_FORMAT, CLIENT_STATE_FILE, LATEST_FILE, MODEL_STATES_FILE, read_client_state, read_latest_tag, tag_for)

logger = get_logger(__name__)

_SHARD_PATTERN = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


@dataclass(frozen=True)
class LoadedCheckpoint:
    directory: Path
    tag: str
    model_config: GPT2Config
    state_dict: dict[str, torch.Tensor]  # our parameter names, float32, full (consolidated) tensors
    client_state: dict[str, Any]  # client_state.json content (no rng states)
    vocab_fingerprint: str | None
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
                raise CheckpointError(f"{directory} is one checkpoint's folder; pass the directory above it "
                                      f"({directory.parent}) and --tag {directory.name}")
            found = sorted(p.name for p in directory.glob("global_step*") if p.is_dir())
            hint = (f"it has {', '.join(found)} but no committed one (pass --tag to choose one anyway)" if found
                    else "no global_step* folders either")
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
    states = _torch_load(where / MODEL_STATES_FILE)
    module = states.get("module")
    if not isinstance(module, dict):
        raise CheckpointError(f"{where / MODEL_STATES_FILE} has no 'module' state dict; not a DeepSpeed checkpoint")

    shards = _find_shards(where)
    if shards:
        state_dict, source = _consolidate_zero_shards(shards, states.get("param_shapes"), where)
        _check_against_module(state_dict, module, where)
        for name, tensor in module.items():  # parameters the optimizer did not own (frozen), and buffers
            state_dict.setdefault(name, tensor.float() if tensor.is_floating_point() else tensor)
    else:
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in module.values()})
        source = f"module ({', '.join(dtypes)})"
        if dtypes != ["float32"]:
            logger.warning("%s has no ZeRO optimizer shards: exporting the %s copies in %s, not fp32 master weights",
                           where, "/".join(dtypes), MODEL_STATES_FILE)
        state_dict = {name: tensor.float() for name, tensor in module.items()}

    expected = model_state_keys(model_config)
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: the weights do not fit its model_config (missing {missing[:6]}, "
                              f"unexpected {unexpected[:6]}); the checkpoint was not written by this version of "
                              "megatron_zh or is damaged")
    state_dict = {name: state_dict[name].contiguous() for name in expected}
    logger.info("read %s: %s, %.2f M parameters", where, source,
                sum(t.numel() for t in state_dict.values()) / 1e6)
    return LoadedCheckpoint(directory=directory, tag=tag, model_config=model_config, state_dict=state_dict,
                            client_state=client_state, vocab_fingerprint=client_state.get("vocab_fingerprint"),
                            weights_source=source)


def _model_config(client_state: dict[str, Any], where: Path) -> GPT2Config:
    saved = client_state.get("model_config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where} has no model_config in its client state: it was not written by "
                              f"pretrain_gpt.py (format {CHECKPOINT_FORMAT})")
    fmt = client_state.get("checkpoint_format")
    if fmt is not None and fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where} has checkpoint_format {fmt!r}; this version reads {CHECKPOINT_FORMAT!r}")
    try:
        return GPT2Config.from_dict(saved)
    except ConfigError as exc:
        raise ConfigError(f"{where}: cannot map its model_config to GPT-2: {exc}") from None


def _torch_load(path: Path) -> dict[str, Any]:
    # DeepSpeed pickles its own objects (loss scaler, enums) beside the tensors: weights_only cannot read them.
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # truncated or foreign files raise many different types
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None


def _find_shards(folder: Path) -> list[Path]:
    """ZeRO optimizer files in rank order; CheckpointError if ranks are missing or layouts are mixed."""
    found: dict[int, Path] = {}
    kinds = set()
    for path in folder.iterdir():
        if match := _SHARD_PATTERN.match(path.name):
            found[int(match.group(2))] = path
            kinds.add(bool(match.group(1)))
    if len(kinds) > 1:
        raise CheckpointError(f"{folder} holds both zero_pp_rank_* and bf16_zero_pp_rank_* optimizer files; "
                              "it mixes two runs")
    if found and sorted(found) != list(range(len(found))):
        raise CheckpointError(f"{folder}: optimizer files for ranks {sorted(found)}, expected 0..{max(found)}; "
                              "the checkpoint is incomplete")
    return [found[r] for r in range(len(found))]


def _consolidate_zero_shards(shards: list[Path], param_shapes: Any,
                             where: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not isinstance(param_shapes, list) or not all(isinstance(g, dict) for g in param_shapes):
        raise CheckpointError(f"{where / MODEL_STATES_FILE} has no 'param_shapes'; cannot split the ZeRO shards")
    partitions, group_paddings = [], []
    param_paddings = None
    for rank, path in enumerate(shards):
        optim = _torch_load(path).get("optimizer_state_dict")
        if not isinstance(optim, dict) or "single_partition_of_fp32_groups" not in optim:
            raise CheckpointError(f"{path} holds no ZeRO fp32 partitions (single_partition_of_fp32_groups)")
        stage = optim.get("zero_stage")
        if stage is not None and int(stage) > 2:
            raise CheckpointError(f"{path}: ZeRO stage {int(stage)} checkpoints are not supported (stage 1 or 2)")
        counts = optim.get("partition_count")
        counts = counts if isinstance(counts, list) else [counts]
        if any(int(c) != len(shards) for c in counts):
            raise CheckpointError(f"{path} was written by {max(counts)} ranks but {where} has {len(shards)} "
                                  "optimizer files; the checkpoint is incomplete or mixes two runs")
        groups = optim["single_partition_of_fp32_groups"]
        if len(groups) != len(param_shapes):
            raise CheckpointError(f"{path} has {len(groups)} parameter groups, param_shapes lists {len(param_shapes)}")
        partitions.append(groups)
        group_paddings.append(optim.get("group_paddings") or [0] * len(groups))
        if rank == 0:
            param_paddings = optim.get("param_alignment_paddings")

    state_dict: dict[str, torch.Tensor] = {}
    for g, shapes in enumerate(param_shapes):
        flat = torch.cat([partitions[r][g].float() for r in range(len(shards))])
        offset = 0
        for i, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            if offset + numel > flat.numel():
                raise CheckpointError(f"{where}: parameter group {g} has {flat.numel()} fp32 values, too few for "
                                      f"{name} at offset {offset}; the shards do not match param_shapes")
            state_dict[name] = flat[offset:offset + numel].view(tuple(shape)).clone()
            offset += numel + (int(param_paddings[g][i]) if param_paddings else 0)
        padding = sum(int(p[g]) for p in group_paddings)
        if offset + padding != flat.numel():
            raise CheckpointError(f"{where}: parameter group {g} has {flat.numel()} fp32 values but its parameters "
                                  f"take {offset} and its padding {padding}; the shards do not match param_shapes")
    kind = "bf16 optimizer, " if shards[0].name.startswith("bf16_") else ""
    return state_dict, f"zero-fp32-master ({kind}{len(shards)} rank{'s' * (len(shards) > 1)})"


def _check_against_module(masters: dict[str, torch.Tensor], module: dict[str, torch.Tensor], where: Path) -> None:
    """The module copy is the masters rounded to the training dtype: anything else means a mis-read."""
    for name, master in masters.items():
        copy = module.get(name)
        if copy is None or tuple(copy.shape) != tuple(master.shape):
            raise CheckpointError(f"{where}: optimizer shards hold {name} {tuple(master.shape)}, the module "
                                  f"{'nothing' if copy is None else tuple(copy.shape)}")
        if not torch.equal(master.to(copy.dtype), copy):
            worst = (master - copy.float()).abs().max().item()
            raise CheckpointError(f"{where}: {name} in the ZeRO shards differs from the module copy by up to "
                                  f"{worst:.3g}; the optimizer files and model states do not belong together")


def write_checkpoint(directory: str | Path, model_config: GPT2Config, state_dict: dict[str, torch.Tensor], *,
                     vocab_fingerprint: str, vocab_size: int, source: str, overwrite: bool = False) -> Path:
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
        raise CheckpointError(f"state dict does not fit the model config (missing {missing[:6]}, "
                              f"unexpected {unexpected[:6]})")
    module = OrderedDict((name, state_dict[name].detach().to("cpu", torch.float32).contiguous()) for name in expected)
    tag = tag_for(0)
    client_state = {
        "checkpoint_format": CHECKPOINT_FORMAT,
        "iteration": 0,
        "consumed_samples": 0,
        "model_config": model_config.to_dict(),
        "vocab_fingerprint": vocab_fingerprint,
        "vocab_size": vocab_size,
        "train_config": None,
        "world_size": 1,
        "precision": "fp32",
        "source": source,
        "weights_only": True,  # no optimizer or schedule state: start from it with --finetune
    }
    import deepspeed

    # What DeepSpeed's load_checkpoint(load_module_only=True) reads, beside our client state.
    states = {
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
        **client_state,
        "rng_states": [],
    }
    with staging_directory(directory, overwrite=overwrite) as staging:
        folder = staging / tag
        folder.mkdir()
        torch.save(states, folder / MODEL_STATES_FILE)
        (folder / CLIENT_STATE_FILE).write_text(json.dumps(client_state, indent=2), encoding="utf-8")
        (staging / LATEST_FILE).write_text(tag, encoding="utf-8")
        commit_directory(staging, directory)
    return directory / tag
