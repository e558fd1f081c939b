"""Preflight checks on the checkpoint directories, run on every rank before the process group starts.

- `--load` must exist (a typo would otherwise start a fresh run silently), except when it is the
  run's own `--save` directory that a first submission has not created yet.
- A `--save` that already holds a committed checkpoint is never overwritten by a run that would
  start from scratch; `--override-existing-save` is the deliberate way to do it.
- `--save` must be writable: found now, not at the first save an hour into the run.
- The checkpoint to start from must be complete (its model-states file and one optimizer shard per
  rank that wrote it) and every file in it must pass the restricted unpickler (checkpoint/safety.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from megatron_zh.checkpoint.layout import (
    LATEST_FILE,
    MODEL_STATES_FILE,
    SHARD_NAME_HELP,
    TAG_PATTERN,
    read_latest_tag,
    shard_ranks,
)
from megatron_zh.checkpoint.safety import check_checkpoint_files
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.log import get_logger
from megatron_zh.training.checkpointing.start import StartPoint
from megatron_zh.training.config.train_config import TrainConfig

logger = get_logger(__name__)


def same_directory(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    """Whether two spellings name the same directory (symlinks, `..`, trailing slashes), existing or not."""
    if a is None or b is None:
        return False
    return os.path.realpath(os.path.abspath(a)) == os.path.realpath(os.path.abspath(b))


def check_load_exists(train: TrainConfig) -> None:
    """A `--load` that does not exist is an error, unless it is this run's own --save (first submission)."""
    if train.load is None or same_directory(train.load, train.save):
        return
    load = Path(train.load)
    if not load.exists():
        raise ConfigError(
            f"--load {load} does not exist (pretrain.load / --load): fix the path, or drop --load to start from scratch"
        )
    if not load.is_dir():
        raise ConfigError(f"--load {load} is a file; pass the --save directory of the run to continue")


def check_not_overwriting(train: TrainConfig, start: StartPoint) -> None:
    """A fresh start must not write into a --save directory that holds another run's checkpoints."""
    if start.mode != "scratch" or train.save is None:
        return
    tag = read_latest_tag(train.save) if Path(train.save).is_dir() else None
    if tag is None:
        return
    if train.override_existing_save:
        logger.warning(
            "--override-existing-save: starting from scratch in %s, which holds checkpoint %s; "
            "its checkpoints are replaced as this run saves",
            train.save,
            tag,
        )
        return
    load = "no --load" if train.load is None else f"--load {train.load} holds no checkpoint"
    raise ConfigError(
        f"--save {train.save} already holds checkpoint {tag}, but this run would start from scratch ({load}) "
        f"and overwrite it: pass --load {train.save} to continue that run, a new --save to start another, "
        "or --override-existing-save to replace it"
    )


def check_save_writable(save: str | None) -> None:
    """Create (and remove) a file in --save, or in the directory that will hold it, to prove it is writable.

    os.access is not enough: it answers yes to root on a read-only mount."""
    if save is None:
        return
    path = Path(save)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--save {path} is a file; pass a directory")
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ConfigError(f"--save {path} cannot be created: {probe_dir} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "" if probe_dir == path else f" (cannot create it in {probe_dir})"
        raise ConfigError(
            f"--save {path} is not writable{where}: {exc.strerror or exc}; choose a directory you can write to"
        ) from None


def check_checkpoint_complete(start: StartPoint) -> None:
    """The files DeepSpeed will read are all there, and each passes the restricted unpickler."""
    if start.mode == "scratch" or start.directory is None or start.tag is None:
        return
    folder = Path(start.directory) / start.tag
    way_out = (
        f"write the tag of an earlier complete checkpoint into {Path(start.directory) / LATEST_FILE} "
        f"(ls {start.directory}) to resume from it"
    )
    if not (folder / MODEL_STATES_FILE).is_file():
        raise CheckpointError(f"{folder / MODEL_STATES_FILE} is missing: the checkpoint is incomplete; {way_out}")
    ranks = set(shard_ranks(folder))
    writers = start.info.world_size if start.info is not None else 0
    needs_shards = start.mode == "resume" and not (start.info is not None and start.info.weights_only)
    if needs_shards and writers > 0:
        missing = sorted(set(range(writers)) - ranks)
        if missing:
            raise CheckpointError(
                f"{folder} has no optimizer shard of rank(s) {', '.join(map(str, missing))} "
                f"(written by {writers} ranks; {SHARD_NAME_HELP}): "
                f"the checkpoint is incomplete; {way_out}"
            )
    check_checkpoint_files(folder)


def remove_uncommitted(train: TrainConfig) -> list[Path]:
    """Rank 0, before training: delete checkpoint folders a killed save left behind in the run's own directory.

    `latest` is written last, after every rank has written and fsynced its files, so a global_stepN
    newer than the tag `latest` names (or any, when there is no `latest`) was never committed."""
    if train.save is None or not same_directory(train.load, train.save) or not Path(train.save).is_dir():
        return []
    save = Path(train.save)
    latest = read_latest_tag(save)
    committed = TAG_PATTERN.match(latest) if latest else None
    if latest is not None and committed is None:
        return []  # a tag we did not write: leave the directory alone
    newest = int(committed.group(1)) if committed else -1
    removed = []
    for path in sorted(save.iterdir()):
        match = TAG_PATTERN.match(path.name)
        if match and path.is_dir() and int(match.group(1)) > newest:
            with contextlib.suppress(OSError):
                shutil.rmtree(path)
            removed.append(path)
    if removed:
        logger.warning(
            "removed %s: left by a save that never finished (`latest` names %s)",
            ", ".join(p.name for p in removed),
            latest or "nothing",
        )
    return removed
