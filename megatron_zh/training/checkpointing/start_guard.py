"""Checks on the checkpoint directories before the process group starts, and what rank 0 then tidies.

Every rank, in the preflight (cheap, read-only, so all ranks decide alike):
- `--load` must exist (a typo would otherwise start a fresh run silently), except when it is the
  run's own `--save` directory that a first submission has not created yet.
- A `--save` that already holds a complete checkpoint is never overwritten by a run that would
  start from scratch; `--override-existing-save` is the deliberate way to do it.
- `--save` must be writable: found now, not at the first save an hour into the run.
- When the directory to start from holds complete checkpoints newer than the one `latest` names
  (a rolled-back or stale `latest`), the run refuses to guess: `--ckpt-step N` starts from the one
  wanted, `--set-aside-newer-checkpoints` starts from `latest` and moves the newer ones aside.
- The checkpoint to start from must be complete (checkpoint/completeness.py) and every file in it
  must pass the restricted unpickler (checkpoint/safety.py).

Rank 0, once every check that can refuse the start has passed (`tidy_save_directory`, called by
pretrain.record_start after the checkpoint is loaded: a refused start changes nothing on disk): folders
ahead of the run that are not complete (a save killed before it finished) are renamed
global_stepN.incomplete-<time>, never deleted; the newer ones are set aside when asked; `latest` is
pointed at the checkpoint --ckpt-step chose. A complete checkpoint is never deleted by a start.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from megatron_zh.checkpoint.completeness import (
    checkpoint_folders,
    complete_checkpoints,
    inspect_checkpoint,
    list_tags,
    set_aside,
)
from megatron_zh.checkpoint.layout import LATEST_FILE, read_latest_tag, tag_iteration
from megatron_zh.checkpoint.safety import check_checkpoint_files
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.fileio import atomic_write
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


def _held_checkpoint(directory: str, zero: bool) -> str | None:
    """The checkpoint a directory holds: the tag `latest` names, else its newest complete one."""
    if not Path(directory).is_dir():
        return None
    tag = read_latest_tag(directory)
    if tag is None and (complete := complete_checkpoints(directory, zero)):
        tag = complete[-1][1].name
    return tag


def check_not_overwriting(train: TrainConfig, start: StartPoint, zero: bool = True) -> None:
    """A fresh start must not write into a --save directory that holds another run's checkpoints."""
    if start.mode != "scratch" or train.save is None:
        return
    tag = _held_checkpoint(train.save, zero)
    if tag is None:
        return
    if train.override_existing_save:
        logger.warning(
            "--override-existing-save: starting from scratch in %s, which holds checkpoint %s; its "
            "checkpoints are set aside (renamed global_stepN.replaced-<time>) as this run saves the same steps",
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


def newer_checkpoints(start: StartPoint, zero: bool = True) -> list[tuple[int, Path]]:
    """(N, folder) of the complete checkpoints in the start's directory newer than the one it starts from."""
    step = tag_iteration(start.tag) if start.tag is not None else None
    if start.mode == "scratch" or start.directory is None or step is None:
        return []
    return [(n, p) for n, p in complete_checkpoints(start.directory, zero) if n > step]


def check_newer_checkpoints(train: TrainConfig, start: StartPoint, zero: bool = True) -> None:
    """`latest` older than complete checkpoints beside it: rolled back on purpose, or stale (an old copy).
    Starting from it would leave the newer ones to be overwritten, so the run asks which was meant."""
    if start.chosen_by != "latest" or train.set_aside_newer_checkpoints:
        return
    newer = newer_checkpoints(start, zero)
    if newer:
        # --ckpt-step names a checkpoint of --load; a --finetune run resuming its own --save has only the flag.
        choose = (
            f"pass --ckpt-step {newer[-1][0]} to start from the newest (or --ckpt-step N for another), or "
            if same_directory(start.directory, train.load)
            else "pass "
        )
        raise ConfigError(
            f"{Path(str(start.directory)) / LATEST_FILE} names {start.tag}, but {start.directory} holds newer "
            f"complete checkpoint(s): {list_tags(newer)}; {choose}--set-aside-newer-checkpoints to start from "
            f"{start.tag} and rename the newer ones global_stepN.set-aside-<time> (nothing is deleted)"
        )


def check_checkpoint_complete(start: StartPoint, zero: bool = True) -> None:
    """The files DeepSpeed will read are all there, and each passes the restricted unpickler."""
    if start.mode == "scratch" or start.directory is None or start.tag is None:
        return
    # A resume needs every rank's optimizer file; --finetune reads the weights only.
    found = inspect_checkpoint(start.folder, start.info, zero=zero and start.mode == "resume")
    if not found.complete:
        others = [(n, p) for n, p in complete_checkpoints(start.directory, zero) if p.name != start.tag]
        way_out = (
            f"start from an earlier complete one with --ckpt-step N ({list_tags(others)})"
            if others
            else f"{start.directory} holds no other complete checkpoint"
        )
        raise CheckpointError(f"{found.problems[0]}: checkpoint {start.tag} is incomplete or damaged; {way_out}")
    check_checkpoint_files(start.folder)


def tidy_save_directory(train: TrainConfig, start: StartPoint, zero: bool = True) -> list[Path]:
    """Rank 0, after the last check that can refuse the start and before training: what the start decided,
    done on disk. Returns the folders moved aside. Nothing is deleted:

    - with --set-aside-newer-checkpoints, every global_stepN of the start's directory newer than the
      checkpoint it starts from is renamed global_stepN.set-aside-<time>;
    - when --ckpt-step chose the checkpoint in the run's own directory, `latest` is pointed at it (so a
      kill before the next save resumes it again, and a later save never finds `latest` naming a folder
      it replaces);
    - in --save, every global_stepN that is not complete and lies ahead of the run (newer than the
      checkpoint it resumes; any, when it starts afresh or from another directory), which only a save
      killed before it finished leaves, is renamed global_stepN.incomplete-<time>. One behind the run
      is in nobody's way (a damaged old one, another tool's): left as it is, for --keep-last to prune.
    """
    moved: list[Path] = []
    own = start.directory is not None and same_directory(start.directory, train.save)
    step = tag_iteration(start.tag) if start.tag is not None else None
    if train.set_aside_newer_checkpoints and start.directory is not None and step is not None:
        for n, folder in checkpoint_folders(start.directory):
            if n > step:
                target = set_aside(folder, "set-aside")
                moved.append(target)
                logger.warning("--set-aside-newer-checkpoints: moved %s to %s", folder, target.name)
    if own and start.chosen_by == "--ckpt-step" and start.directory is not None:
        latest = None
        with contextlib.suppress(CheckpointError):  # a damaged `latest` is replaced as well
            latest = read_latest_tag(start.directory)
        if latest != start.tag:
            with atomic_write(Path(start.directory) / LATEST_FILE) as f:
                f.write(str(start.tag))
            logger.warning("`latest` in %s now names %s, the checkpoint --ckpt-step chose", start.directory, start.tag)
    if train.save is None:
        return moved
    behind = step if own and step is not None else -1  # the run's own checkpoints up to its start
    for n, folder in checkpoint_folders(train.save):
        if n <= behind:
            continue
        found = inspect_checkpoint(folder, zero=zero)
        if not found.complete:
            target = set_aside(folder, "incomplete")
            moved.append(target)
            logger.warning(
                "moved %s to %s: it is not a complete checkpoint (%s), left by a save that never finished",
                folder,
                target.name,
                found.problems[0],
            )
    return moved
