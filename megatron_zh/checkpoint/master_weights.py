"""The full-precision weights of a checkpoint pretrain_gpt.py wrote, and putting them back into an engine.

Under bf16 (or fp16) DeepSpeed saves the module in the training dtype, while ZeRO keeps the fp32
master weights partitioned over the data-parallel ranks in the optimizer files (layout.py). Facts
about those files, as DeepSpeed 0.19 writes them for ZeRO stage 1/2:

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
dtype), so a mis-read shard cannot go unnoticed. The export (weights.py, for convert/) and stage 2's
start from stage 1 (training's resume) both read weights through here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from megatron_zh.checkpoint.layout import MODEL_STATES_FILE, find_shards
from megatron_zh.checkpoint.safety import safe_load
from megatron_zh.errors import CheckpointError
from megatron_zh.log import get_logger

logger = get_logger(__name__)


def torch_load(path: Path) -> dict[str, Any]:
    """A checkpoint file through the restricted unpickler (safety.py); CheckpointError if refused or damaged."""
    return safe_load(path, mmap=True)


def read_fp32_weights(folder: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(full float32 state dict, where it came from) of one checkpoint folder (DIR/global_stepN).

    The fp32 masters of the ZeRO optimizer files when there are any (then checked against the
    module copy), else the module copy itself, with a warning if that is not fp32.
    """
    folder = Path(folder)
    states = torch_load(folder / MODEL_STATES_FILE)
    module = states.get("module")
    if not isinstance(module, dict):
        raise CheckpointError(f"{folder / MODEL_STATES_FILE} has no 'module' state dict; not a DeepSpeed checkpoint")
    shards = find_shards(folder)
    if not shards:
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in module.values()})
        if dtypes != ["float32"]:
            logger.warning(
                "%s has no ZeRO optimizer shards: using the %s copies in %s, not fp32 master weights",
                folder,
                "/".join(dtypes),
                MODEL_STATES_FILE,
            )
        return {name: tensor.float() for name, tensor in module.items()}, f"module ({', '.join(dtypes)})"
    state_dict, source = _consolidate_zero_shards(shards, states.get("param_shapes"), folder)
    _check_against_module(state_dict, module, folder)
    for name, tensor in module.items():  # parameters the optimizer did not own (frozen), and buffers
        state_dict.setdefault(name, tensor.float() if tensor.is_floating_point() else tensor)
    return state_dict, source


def set_fp32_masters(engine, weights: dict[str, torch.Tensor]) -> int:
    """Make the engine's fp32 master weights (ZeRO-1/2, BF16_Optimizer) exactly `weights`.

    `engine.load_checkpoint(load_module_only=True)` refreshes the masters from the module, which
    under bf16 holds rounded copies: the bits below bf16 precision would be lost. Returns the
    number of parameters set.
    """
    from deepspeed.utils import safe_set_full_fp32_param

    count = 0
    for name, param in engine.module.named_parameters():
        if name not in weights:
            raise CheckpointError(f"the checkpoint's fp32 weights have no {name}; it does not fit this model")
        if getattr(param, "_hp_mapping", None) is None:
            continue  # frozen, or an optimizer that keeps no separate master copy
        value = weights[name].to(device=param.device, dtype=torch.float32)
        safe_set_full_fp32_param(param, value)
        param.data.copy_(value.to(param.dtype))
        count += 1
    return count


def _consolidate_zero_shards(shards: list[Path], param_shapes: Any, where: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not isinstance(param_shapes, list) or not all(isinstance(g, dict) for g in param_shapes):
        raise CheckpointError(f"{where / MODEL_STATES_FILE} has no 'param_shapes'; cannot split the ZeRO shards")
    partitions, group_paddings = [], []
    param_paddings = None
    for rank, path in enumerate(shards):
        optim = torch_load(path).get("optimizer_state_dict")
        if not isinstance(optim, dict) or "single_partition_of_fp32_groups" not in optim:
            raise CheckpointError(f"{path} holds no ZeRO fp32 partitions (single_partition_of_fp32_groups)")
        stage = optim.get("zero_stage")
        if stage is not None and int(stage) > 2:
            raise CheckpointError(f"{path}: ZeRO stage {int(stage)} checkpoints are not supported (stage 1 or 2)")
        counts = optim.get("partition_count")
        counts = counts if isinstance(counts, list) else [counts]
        if any(int(c) != len(shards) for c in counts):
            raise CheckpointError(
                f"{path} was written by {max(counts)} ranks but {where} has {len(shards)} "
                "optimizer files; the checkpoint is incomplete or mixes two runs"
            )
        groups = optim["single_partition_of_fp32_groups"]
        if len(groups) != len(param_shapes):
            raise CheckpointError(f"{path} has {len(groups)} parameter groups, param_shapes lists {len(param_shapes)}")
        partitions.append(groups)
        group_paddings.append(optim.get("group_paddings") or [0] * len(groups))
        if rank == 0:
            param_paddings = optim.get("param_alignment_paddings")

    state_dict: dict[str, torch.Tensor] = {}
    for g, shapes in enumerate(param_shapes):
        flat = torch.cat([partitions[r][g].detach().float() for r in range(len(shards))])
        offset = 0
        for i, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            if offset + numel > flat.numel():
                raise CheckpointError(
                    f"{where}: parameter group {g} has {flat.numel()} fp32 values, too few for "
                    f"{name} at offset {offset}; the shards do not match param_shapes"
                )
            state_dict[name] = flat[offset : offset + numel].view(tuple(shape)).clone()
            offset += numel + (int(param_paddings[g][i]) if param_paddings else 0)
        padding = sum(int(p[g]) for p in group_paddings)
        if offset + padding != flat.numel():
            raise CheckpointError(
                f"{where}: parameter group {g} has {flat.numel()} fp32 values but its parameters "
                f"take {offset} and its padding {padding}; the shards do not match param_shapes"
            )
    kind = "bf16 optimizer, " if shards[0].name.startswith("bf16_") else ""
    return state_dict, f"zero-fp32-master ({kind}{len(shards)} rank{'s' * (len(shards) > 1)})"


def _check_against_module(masters: dict[str, torch.Tensor], module: dict[str, torch.Tensor], where: Path) -> None:
    """The module copy is the masters rounded to the training dtype: anything else means a mis-read."""
    for name, master in masters.items():
        copy = module.get(name)
        if copy is None or tuple(copy.shape) != tuple(master.shape):
            raise CheckpointError(
                f"{where}: optimizer shards hold {name} {tuple(master.shape)}, the module "
                f"{'nothing' if copy is None else tuple(copy.shape)}"
            )
        if not torch.equal(master.to(copy.dtype), copy):
            worst = (master - copy.float()).abs().max().item()
            raise CheckpointError(
                f"{where}: {name} in the ZeRO shards differs from the module copy by up to "
                f"{worst:.3g}; the optimizer files and model states do not belong together"
            )
