"""Saving: every rank writes its files of global_step<N>, then rank 0 commits `latest`; old ones are pruned.

The layout is checkpoint/layout.py's. A save that fails on any rank fails on every rank, together
(save_guard.py), so `latest` always names a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_zh.checkpoint.client_state import ClientState
from megatron_zh.checkpoint.completeness import checkpoint_folders, inspect_checkpoint, set_aside
from megatron_zh.checkpoint.layout import (
    CLIENT_STATE_FILE,
    LATEST_FILE,
    RUN_CONFIG_FILE,
    read_latest_tag,
    tag_for,
    tag_iteration,
)
from megatron_zh.checkpoint.universal import remove_orphan_caches
from megatron_zh.errors import ConfigError
from megatron_zh.fileio import atomic_write
from megatron_zh.log import get_logger
from megatron_zh.training.checkpointing.rng import gather_rng_states
from megatron_zh.training.checkpointing.save_guard import commit_checkpoint, write_checkpoint_files
from megatron_zh.training.checkpointing.start import TrainState
from megatron_zh.training.config.run_config import RunConfig
from megatron_zh.training.distributed.process_group import DistEnv, barrier

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

logger = get_logger(__name__)


def save_checkpoint(
    engine: DeepSpeedEngine,
    run: RunConfig,
    state: TrainState,
    env: DistEnv,
    vocab_fingerprint: str,
    vocab_size: int,
    normalization: str,
) -> Path:
    """Write global_step<iteration> on every rank, then commit `latest` once all ranks are done."""
    if run.train.save is None:
        raise ConfigError("save_checkpoint needs a save directory (--save)")
    save_dir = Path(run.train.save)
    tag = tag_for(state.iteration)
    folder = save_dir / tag
    if env.is_main and folder.exists():
        # A checkpoint of an earlier history at this step (the run started from an older one: --ckpt-step,
        # --override-existing-save), or a save killed meanwhile: DeepSpeed would write into it. Moved, not deleted.
        found = inspect_checkpoint(folder, zero=run.zero_stage > 0)
        target = set_aside(folder, "replaced" if found.complete else "incomplete")
        logger.warning("moved %s to %s before saving this run's checkpoint %s", folder, target.name, tag)
    barrier()
    client_state = ClientState(
        iteration=state.iteration,
        consumed_samples=state.consumed_samples,
        model_config=run.model.to_dict(),
        vocab_fingerprint=vocab_fingerprint,
        vocab_size=vocab_size,
        normalization=normalization,
        train_config=run.train.to_dict(),
        world_size=env.world_size,
        precision=run.precision,
        rng_states=gather_rng_states(env),
        unlogged_losses=state.unlogged_losses or None,
    )
    # Every rank writes and fsyncs its files; a failure on any rank (full disk, read-only) fails all of them
    # together and removes the unfinished folder (save_guard), so `latest` keeps naming a whole checkpoint.
    write_checkpoint_files(engine, save_dir, tag, client_state.to_dict(), env)

    def commit() -> None:
        with atomic_write(folder / CLIENT_STATE_FILE) as f:
            json.dump(client_state.without_rng_states().to_dict(), f, indent=2)
        with atomic_write(save_dir / LATEST_FILE) as f:
            f.write(tag)

    commit_checkpoint(env, save_dir, tag, commit)
    if env.is_main:
        if run.train.keep_last is not None:
            prune_checkpoints(save_dir, run.train.keep_last, zero=run.zero_stage > 0)
    barrier()
    return folder


def prune_checkpoints(save_dir: Path, keep_last: int, zero: bool = True) -> list[Path]:
    """--keep-last: delete all but the newest `keep_last` complete checkpoints up to `latest`, and any
    incomplete ones older than `latest`. Never touches what `latest` names, nor anything newer."""
    latest = read_latest_tag(save_dir)
    latest_step = tag_iteration(latest) if latest is not None else None
    if latest is None or latest_step is None:
        return []
    found = [(step, p) for step, p in reversed(checkpoint_folders(save_dir)) if step <= latest_step]
    complete = [p for _, p in found if inspect_checkpoint(p, zero=zero).complete]
    keep = set(complete[:keep_last]) | {save_dir / latest}
    removed: list[Path] = []
    for _, path in found:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed old checkpoint(s) %s (keep_last=%d)", ", ".join(p.name for p in removed), keep_last)
        removed += remove_orphan_caches(save_dir)  # universal copies of the removed ones
    return removed


def write_run_config(save_dir: str | os.PathLike[str], effective: dict[str, Any]) -> Path:
    """Save the effective configuration beside the checkpoints (rank 0 calls this)."""
    path = Path(save_dir) / RUN_CONFIG_FILE
    with atomic_write(path) as f:
        json.dump(effective, f, indent=2, default=str)
    return path
