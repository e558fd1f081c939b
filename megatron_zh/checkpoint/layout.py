"""The names of a save directory: DeepSpeed's own layout, plus our client state, committed only once complete.

Layout of a save directory (what tools/convert_to_hf.py and `--load` read)::

    <save>/
      latest                       tag of the newest COMPLETE checkpoint, e.g. "global_step2000".
                                   Written by rank 0, atomically, only after every rank has written
                                   and fsynced its files (DeepSpeed itself writes it from rank 0
                                   before the other ranks are done, so we pass save_latest=False).
      config.json                  the effective configuration of the run that wrote the directory
      metrics.jsonl                one JSON object per logged step / evaluation (training/metrics.py)
      tensorboard/                 TensorBoard event files (unless --tensorboard-dir)
      zero_to_fp32.py              DeepSpeed's offline consolidation script (DeepSpeed copies it)
      global_step<N>/              one checkpoint; N is the iteration (optimizer steps done)
        mp_rank_00_model_states.pt DeepSpeed, torch.save'd dict: "module" (the full model
                                   state_dict in the training dtype, i.e. fp32, or bf16 copies under
                                   bf16), "lr_scheduler", "global_steps", "global_samples",
                                   "ds_config", "ds_version", ... and CLIENT STATE (client_state.py)
        zero_pp_rank_<r>_mp_rank_00_optim_states.pt
                                   DeepSpeed ZeRO: rank r's partition of the fp32 master weights
                                   ("optimizer_state_dict"/"single_partition_of_fp32_groups") and
                                   of the AdamW moments. Under bf16 with fp32 gradient accumulation
                                   (ds_configs/stage*.json) DeepSpeed names them
                                   bf16_zero_pp_rank_<r>_mp_rank_00_optim_states.pt.
        client_state.json          the client state without "rng_states", readable without torch
                                   (preflight reads it before anything heavy starts)
      global_step<N>_universal/    a DeepSpeed universal copy of global_step<N>, made to resume on
                                   another number of ranks (universal.py); latest_universal names it
      global_step<N>.<why>-<time>/ a checkpoint folder moved out of the way, never deleted
                                   (completeness.set_aside): <why> is "incomplete" (a save that never
                                   finished), "set-aside" (newer than the checkpoint a run was told to
                                   start from: --set-aside-newer-checkpoints) or "replaced" (a complete
                                   one at the step a save was about to write); <time> is
                                   YYYYMMDD-HHMMSS. TAG_PATTERN and UNIVERSAL_PATTERN do not match these
                                   names, so no start, save, resume or pruning reads or touches them
                                   again: rename one back to use it.

This module is the one place these names are spelled.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Literal

from megatron_zh.errors import CheckpointError

LATEST_FILE = "latest"
CLIENT_STATE_FILE = "client_state.json"
MODEL_STATES_FILE = "mp_rank_00_model_states.pt"
RUN_CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")
# DeepSpeed's ZeRO optimizer files; the bf16_ prefix is BF16_Optimizer's (bf16 with fp32 gradient accumulation).
SHARD_PATTERN = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")
SHARD_NAME_HELP = "zero_pp_rank_<r>_mp_rank_00_optim_states.pt"

UNIVERSAL_SUFFIX = "_universal"
LATEST_UNIVERSAL_FILE = "latest_universal"  # DeepSpeed's name: engine.load_checkpoint(tag=None) reads it
UNIVERSAL_PATTERN = re.compile(r"^(global_step\d+)" + re.escape(UNIVERSAL_SUFFIX) + "$")

AsideReason = Literal["incomplete", "set-aside", "replaced"]


def tag_for(iteration: int) -> str:
    return f"global_step{iteration}"


def tag_iteration(tag: str) -> int | None:
    """N of "global_stepN"; None for any other name."""
    match = TAG_PATTERN.match(tag)
    return int(match.group(1)) if match else None


def universal_tag(tag: str) -> str:
    return tag + UNIVERSAL_SUFFIX


def aside_name(name: str, reason: AsideReason, when: float | None = None) -> str:
    """global_step12.incomplete-20261205-101500: the name a folder is moved to instead of being deleted."""
    return f"{name}.{reason}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"


def read_latest_tag(directory: str | os.PathLike[str]) -> str | None:
    """The tag `latest` names, or None when the directory holds no committed checkpoint."""
    path = Path(directory) / LATEST_FILE
    if not path.is_file():
        return None
    way_out = (
        "it should hold one checkpoint's tag, such as global_step1000: write the tag to resume from there, "
        "or remove the file to resume from the newest complete checkpoint"
    )
    data = path.read_bytes()
    try:
        tag = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not text ({len(data)} bytes of binary data); {way_out}") from None
    if not tag:
        raise CheckpointError(f"{path} is empty; {way_out}")
    if "\n" in tag or "/" in tag or "\0" in tag:
        raise CheckpointError(f"{path} holds {tag[:40]!r}, not the name of one checkpoint folder; {way_out}")
    return tag


def shard_ranks(folder: Path) -> dict[int, Path]:
    """{rank: file} of the ZeRO optimizer files in a checkpoint folder, whatever their layout."""
    return {int(m.group(2)): p for p in folder.iterdir() if (m := SHARD_PATTERN.match(p.name))}


def find_shards(folder: Path) -> list[Path]:
    """ZeRO optimizer files in rank order; CheckpointError if ranks are missing or layouts are mixed."""
    matches = [m for p in folder.iterdir() if (m := SHARD_PATTERN.match(p.name))]
    if len({bool(m.group(1)) for m in matches}) > 1:
        raise CheckpointError(
            f"{folder} holds both zero_pp_rank_* and bf16_zero_pp_rank_* optimizer files; it mixes two runs"
        )
    found = {int(m.group(2)): folder / m.string for m in matches}
    if found and sorted(found) != list(range(len(found))):
        raise CheckpointError(
            f"{folder}: optimizer files for ranks {sorted(found)}, expected 0..{max(found)}; "
            "the checkpoint is incomplete"
        )
    return [found[r] for r in range(len(found))]
