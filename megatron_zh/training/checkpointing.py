"""Checkpoints: DeepSpeed's own layout, plus our client state, committed only once complete.

Layout of a save directory (what tools/convert_to_hf.py and `--load` read)::

    <save>/
      latest                       tag of the newest COMPLETE checkpoint, e.g. "global_step2000".
                                   Written by rank 0, atomically, only after every rank has written
                                   and fsynced its files (DeepSpeed itself writes it from rank 0
                                   before the other ranks are done, so we pass save_latest=False).
      config.json                  the effective configuration of the run that wrote the directory
      metrics.jsonl                one JSON object per logged step / evaluation (metrics.py)
      tensorboard/                 TensorBoard event files (unless --tensorboard-dir)
      zero_to_fp32.py              DeepSpeed's offline consolidation script (DeepSpeed copies it)
      global_step<N>/              one checkpoint; N is the iteration (optimizer steps done)
        mp_rank_00_model_states.pt DeepSpeed, torch.save'd dict: "module" (the full model
                                   state_dict in the training dtype, i.e. fp32, or bf16 copies under
                                   bf16), "lr_scheduler", "global_steps", "global_samples",
                                   "ds_config", "ds_version", ... and CLIENT STATE (keys below)
        zero_pp_rank_<r>_mp_rank_00_optim_states.pt
                                   DeepSpeed ZeRO: rank r's partition of the fp32 master weights
                                   ("optimizer_state_dict"/"single_partition_of_fp32_groups") and
                                   of the AdamW moments. Under bf16 with fp32 gradient accumulation
                                   (ds_configs/stage*.json) DeepSpeed names them
                                   bf16_zero_pp_rank_<r>_mp_rank_00_optim_states.pt.
        client_state.json          the client state without "rng_states", readable without torch
                                   (validation reads it before anything heavy starts)

The client state and its keys: megatron_zh/training/client_state.py (ClientState); on another
number of ranks, rank r continues the RNG states of saved rank r mod N (see universal.py).

Resuming on another number of data-parallel ranks goes through a DeepSpeed universal copy of the
checkpoint, cached beside it as global_step<N>_universal/ (universal.py).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from megatron_zh.checkpoint_safety import guard_engine_loads, safe_load
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.fileio import atomic_write
from megatron_zh.log import get_logger
from megatron_zh.tokenizer import check_fingerprint
from megatron_zh.training.client_state import ClientState
from megatron_zh.training.config import RunConfig, TrainConfig
from megatron_zh.training.distributed import DistEnv, barrier
from megatron_zh.training.master_weights import MODEL_STATES_FILE, read_fp32_weights, set_fp32_masters
from megatron_zh.training.save_guard import commit_checkpoint, write_checkpoint_files
from megatron_zh.training.universal import remove_orphan_caches, rng_state_for_rank, universal_loading

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

logger = get_logger(__name__)

LATEST_FILE = "latest"
CLIENT_STATE_FILE = "client_state.json"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")
# Model config fields that fix the weights' shapes: a checkpoint only loads into a model with the same.
SHAPE_FIELDS = (
    "vocab_size",
    "max_position_embeddings",
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "ffn_hidden_size",
)
# Train config fields that decide which sample comes next: changing them on resume changes the data order.
DATA_ORDER_FIELDS = ("data_path", "seq_length", "split", "seed")


@dataclass
class TrainState:
    """The counters a checkpoint carries forward."""

    iteration: int = 0
    consumed_samples: int = 0


StartMode = Literal["scratch", "resume", "finetune"]
RngState = dict[str, Any]  # {"python", "numpy", "torch", "cuda"}: one rank's random generators


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: from scratch, resuming a checkpoint, or from a checkpoint's weights only."""

    mode: StartMode
    directory: str | None = None  # set, with tag and info, unless mode is "scratch"
    tag: str | None = None
    info: ClientState | None = None  # the checkpoint's client state (without RNG states)
    # Tag of a DeepSpeed universal copy of `tag` to load instead (set by universal.prepare_resume when the
    # data-parallel size changed since the save).
    universal: str | None = None

    @property
    def folder(self) -> Path:
        """The checkpoint's folder, DIRECTORY/TAG."""
        if self.directory is None or self.tag is None:
            raise CheckpointError("a run started from scratch has no checkpoint folder")
        return Path(self.directory) / self.tag


def tag_for(iteration: int) -> str:
    return f"global_step{iteration}"


def read_latest_tag(directory: str | os.PathLike[str]) -> str | None:
    """The tag `latest` names, or None when the directory holds no committed checkpoint."""
    path = Path(directory) / LATEST_FILE
    if not path.is_file():
        return None
    tag = path.read_text(encoding="utf-8").strip()
    if not tag:
        raise CheckpointError(f"{path} is empty; it should name a checkpoint such as global_step1000")
    return tag


def read_client_state(directory: str | os.PathLike[str], tag: str) -> ClientState:
    """A checkpoint's client state without RNG states: client_state.json, else from the model-states file."""
    folder = Path(directory) / tag
    if not (folder / MODEL_STATES_FILE).is_file():
        raise CheckpointError(
            f"{folder / MODEL_STATES_FILE} not found: {Path(directory) / LATEST_FILE} names "
            f"{tag!r} but that checkpoint is missing or incomplete"
        )
    sidecar = folder / CLIENT_STATE_FILE
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{sidecar} is not valid JSON ({exc.msg}); the checkpoint is damaged") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{sidecar} does not hold a JSON object; the checkpoint is damaged")
        return ClientState.from_dict(data, str(sidecar)).without_rng_states()
    # A checkpoint written by another tool: read the client state from DeepSpeed's file (heavier).
    states = safe_load(folder / MODEL_STATES_FILE)
    return ClientState.from_dict(states, str(folder / MODEL_STATES_FILE)).without_rng_states()


def resolve_start(train: TrainConfig) -> StartPoint:
    """Decide where the run starts. Cheap: reads `latest` and client_state.json only.

    A stage-2 style run (finetune) that already has a checkpoint in its own save directory resumes
    that one instead of starting over from the stage-1 weights, so a pre-empted job can simply be
    resubmitted with the same command.
    """
    if train.finetune and train.save and (saved := read_latest_tag(train.save)) is not None:
        logger.info(
            "%s already holds checkpoint %s: resuming it instead of starting again from %s",
            train.save,
            saved,
            train.load,
        )
        return StartPoint("resume", train.save, saved, read_client_state(train.save, saved))
    if train.load is None:
        return StartPoint("scratch")
    tag = read_latest_tag(train.load) if Path(train.load).is_dir() else None
    if tag is None:
        if train.finetune:
            raise ConfigError(
                f"finetune: no checkpoint to start from in {train.load} (no `latest` file); "
                "train stage 1 first or point --load at its save directory"
            )
        logger.warning("no checkpoint in %s (no `latest` file): starting from scratch", train.load)
        return StartPoint("scratch")
    info = read_client_state(train.load, tag)
    planned = (info.train_config or {}).get("train_iters")
    if train.finetune and isinstance(planned, int) and info.iteration < planned:
        logger.warning(
            "starting from %s/%s at iteration %s, but the run that wrote it planned %d iterations: "
            "it has not finished (pass --load of a finished run, or resume it first)",
            train.load,
            tag,
            info.iteration,
            planned,
        )
    return StartPoint("finetune" if train.finetune else "resume", train.load, tag, info)


def check_compatible(start: StartPoint, run: RunConfig, vocab_fingerprint: str) -> None:
    """The checkpoint must have been trained with this vocab and have this model's shapes."""
    if start.info is None:
        return
    where = f"{start.directory}/{start.tag}"
    check_fingerprint(
        start.info.vocab_fingerprint,
        vocab_fingerprint,
        source=f"checkpoint {where}",
        fix=f"{run.train.vocab_file} is not the vocab it was trained with; use that one",
        error=ConfigError,
    )
    saved_model = start.info.model_config
    mismatched = [
        f"{k}: checkpoint {saved_model[k]} vs run {getattr(run.model, k)}"
        for k in SHAPE_FIELDS
        if k in saved_model and saved_model[k] != getattr(run.model, k)
    ]
    if mismatched:
        raise ConfigError(
            f"checkpoint {where} does not fit model {run.train.model!r} ({'; '.join(mismatched)}); "
            "choose the preset it was trained with"
        )
    saved_train = start.info.train_config or {}
    changed = [
        f"{k} {saved_train[k]!r} -> {v!r}"
        for k, v in run.train.to_dict().items()
        if k in DATA_ORDER_FIELDS and k in saved_train and saved_train[k] != v
    ]
    if start.mode == "resume" and changed:
        logger.warning(
            "resuming %s with %s: the run continues, but not on the sample an uninterrupted run would have read next",
            where,
            ", ".join(changed),
        )


# ---------------------------------------------------------------------------------------------- RNG


def capture_rng_state() -> RngState:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: RngState) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _gather_rng_states(env: DistEnv) -> list[RngState]:
    mine = capture_rng_state()
    if env.world_size == 1:
        return [mine]
    states: list[Any] = [None] * env.world_size
    torch.distributed.all_gather_object(states, mine)
    return states


# --------------------------------------------------------------------------------------------- save


def save_checkpoint(
    engine: DeepSpeedEngine, run: RunConfig, state: TrainState, env: DistEnv, vocab_fingerprint: str, vocab_size: int
) -> Path:
    """Write global_step<iteration> on every rank, then commit `latest` once all ranks are done."""
    if run.train.save is None:
        raise ConfigError("save_checkpoint needs a save directory (--save)")
    save_dir = Path(run.train.save)
    tag = tag_for(state.iteration)
    folder = save_dir / tag
    if env.is_main and folder.exists() and read_latest_tag(save_dir) != tag:
        shutil.rmtree(folder)  # left by a run killed while saving: never committed, so never loaded
    barrier()
    client_state = ClientState(
        iteration=state.iteration,
        consumed_samples=state.consumed_samples,
        model_config=run.model.to_dict(),
        vocab_fingerprint=vocab_fingerprint,
        vocab_size=vocab_size,
        train_config=run.train.to_dict(),
        world_size=env.world_size,
        precision=run.precision,
        rng_states=_gather_rng_states(env),
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
            prune_checkpoints(save_dir, run.train.keep_last)
    barrier()
    return folder


def prune_checkpoints(save_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, and any abandoned partial ones older
    than `latest`. Never touches what `latest` names."""
    latest = read_latest_tag(save_dir)
    latest_match = TAG_PATTERN.match(latest) if latest is not None else None
    if latest is None or latest_match is None:
        return []
    latest_step = int(latest_match.group(1))
    found = sorted(
        ((int(m.group(1)), p) for p in save_dir.iterdir() if p.is_dir() and (m := TAG_PATTERN.match(p.name))),
        reverse=True,
    )
    complete = [(step, p) for step, p in found if (p / CLIENT_STATE_FILE).is_file() and step <= latest_step]
    keep = {p for _, p in complete[:keep_last]} | {save_dir / latest}
    removed: list[Path] = []
    for step, path in found:
        if path not in keep and step <= latest_step:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed old checkpoint(s) %s (keep_last=%d)", ", ".join(p.name for p in removed), keep_last)
        removed += remove_orphan_caches(save_dir)  # universal copies of the removed ones
    return removed


# --------------------------------------------------------------------------------------------- load


def load_checkpoint(engine: DeepSpeedEngine, start: StartPoint, env: DistEnv) -> tuple[TrainState, RngState | None]:
    """Load what `start` says into the engine. Returns the counters and this rank's RNG state to restore
    (None when the run starts fresh: finetune, or a checkpoint without random states)."""
    if start.mode == "scratch" or start.directory is None or start.tag is None:
        return TrainState(), None
    finetune = start.mode == "finetune"
    guard_engine_loads(engine)  # DeepSpeed unpickles with weights_only=False: give it the restricted loader
    with universal_loading(engine, start):
        path, client = engine.load_checkpoint(
            start.directory,
            tag=start.universal or start.tag,
            load_module_only=finetune,
            load_optimizer_states=not finetune,
            load_lr_scheduler_states=not finetune,
        )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {start.directory}/{start.tag}")
    if finetune:
        if any(p.dtype != torch.float32 for p in engine.module.parameters()):
            # DeepSpeed refreshed the fp32 masters from the bf16/fp16 module: take the checkpoint's own.
            weights, source = read_fp32_weights(start.folder)
            count = set_fp32_masters(engine, weights)
            logger.info("fp32 master weights of %d parameters set from %s (%s)", count, path, source)
        logger.info("initialised the weights from %s (fresh optimizer, schedule and sample counter)", path)
        return TrainState(), None
    saved = ClientState.from_dict(client, str(path))
    state = TrainState(iteration=saved.iteration, consumed_samples=saved.consumed_samples)
    # DeepSpeed restores the scheduler's step count; make the optimizer's lr agree with it now rather than
    # after the first step, so step N+1 runs at exactly the lr the uninterrupted run used.
    scheduler = engine.lr_scheduler
    if scheduler is not None and hasattr(scheduler, "last_batch_iteration"):
        scheduler.step(scheduler.last_batch_iteration)
    rng_states = saved.rng_states or []
    rng = rng_state_for_rank(rng_states, env.rank)  # rank r continues rank r mod N's stream (universal.py)
    if rng is None:
        logger.warning("checkpoint %s holds no random states: they stay as seeded", path)
    elif len(rng_states) != env.world_size:
        logger.info(
            "checkpoint %s holds the random states of %d rank(s), this run has %d: rank r continues "
            "the stream of saved rank r mod %d",
            path,
            len(rng_states),
            env.world_size,
            len(rng_states),
        )
    logger.info("resumed %s at iteration %d, %d samples consumed", path, state.iteration, state.consumed_samples)
    return state, rng


def write_run_config(save_dir: str | os.PathLike[str], effective: dict[str, Any]) -> Path:
    """Save the effective configuration beside the checkpoints (rank 0 calls this)."""
    path = Path(save_dir) / "config.json"
    with atomic_write(path) as f:
        json.dump(effective, f, indent=2, default=str)
    return path
