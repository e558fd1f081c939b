"""A save that fails on any rank fails on every rank, together, and leaves `latest` on the last good checkpoint.

A full disk or a read-only mount makes `torch.save` raise on one rank in the middle of DeepSpeed's
`engine.save_checkpoint`. Raised there, that rank would skip DeepSpeed's closing barrier and the
others would wait for it forever. So the writes are wrapped: an OSError is recorded (and the
half-written file removed) instead of raised, every rank still reaches DeepSpeed's barriers, and
afterwards the ranks exchange what went wrong. If anything did, rank 0 removes the unfinished
checkpoint folder and every rank raises the same one-line CheckpointError; `latest` was never
touched, so the same command resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from megatron_zh.checkpoint.layout import read_latest_tag
from megatron_zh.errors import CheckpointError
from megatron_zh.fileio import fsync_tree
from megatron_zh.log import get_logger
from megatron_zh.training.distributed.process_group import DistEnv, barrier

logger = get_logger(__name__)


def _describe(exc: OSError, path: Any) -> str:
    return f"could not write {path}: {exc.strerror or exc}" + (f" (errno {exc.errno})" if exc.errno else "")


@contextlib.contextmanager
def _recording_writes(engine: Any, errors: list[str]) -> Iterator[None]:
    """While open, the engine's checkpoint writes record OSErrors in `errors` instead of raising them."""
    checkpoint_engine = engine.checkpoint_engine
    original_save = checkpoint_engine.save
    original_copy = getattr(engine, "_copy_recovery_script", None)

    def save(state_dict: Any, path: str) -> None:
        try:
            original_save(state_dict, path)
        except OSError as exc:
            errors.append(_describe(exc, path))
            with contextlib.suppress(OSError):
                os.unlink(path)  # a truncated file must not look like a shard

    checkpoint_engine.save = save
    if original_copy is not None:

        def copy_recovery_script(save_path: str) -> None:
            # zero_to_fp32.py beside the checkpoints is a convenience, not part of one: warn, do not fail.
            try:
                original_copy(save_path)
            except OSError as exc:
                logger.warning("DeepSpeed's zero_to_fp32.py was not copied to %s: %s", save_path, exc.strerror or exc)

        engine._copy_recovery_script = copy_recovery_script
    try:
        yield
    finally:
        checkpoint_engine.save = original_save
        if original_copy is not None:
            engine._copy_recovery_script = original_copy


def _failures(env: DistEnv, error: str | None) -> list[tuple[int, str]]:
    """(rank, error) of every rank that failed; the same list on all ranks."""
    if env.world_size == 1 or not torch.distributed.is_initialized():
        return [] if error is None else [(env.rank, error)]
    errors: list[Any] = [None] * env.world_size
    torch.distributed.all_gather_object(errors, error)
    return [(rank, e) for rank, e in enumerate(errors) if e is not None]


def _fail_together(env: DistEnv, failures: list[tuple[int, str]], save_dir: Path, tag: str) -> None:
    """Rank 0 removes the unfinished folder; then every rank raises the same error."""
    latest = read_latest_tag(save_dir)
    if env.is_main and latest != tag:  # never delete what `latest` names
        shutil.rmtree(save_dir / tag, ignore_errors=True)
    barrier()  # nobody exits (and has the launcher kill the rest) before the folder is gone
    rank, first = failures[0]
    others = f" (and {len(failures) - 1} more rank(s))" if len(failures) > 1 else ""
    kept = f"`latest` still names {latest}" if latest else "no checkpoint was committed yet"
    raise CheckpointError(
        f"saving checkpoint {tag} in {save_dir} failed: rank {rank} {first}{others}; {kept} and the unfinished "
        f"{tag} was removed; free space or fix {save_dir} (or pass another --save), then run the same command "
        "to resume"
    )


def write_checkpoint_files(
    engine: Any, save_dir: Path, tag: str, client_state: dict[str, Any], env: DistEnv, save_latest: bool = False
) -> None:
    """engine.save_checkpoint + fsync on every rank; all ranks raise CheckpointError if any rank failed."""
    errors: list[str] = []
    with _recording_writes(engine, errors):
        engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, save_latest=save_latest)
    if not errors:
        try:
            fsync_tree(save_dir / tag)  # each rank: its own files are on disk before anyone commits
        except OSError as exc:
            errors.append(_describe(exc, save_dir / tag))
    failures = _failures(env, errors[0] if errors else None)
    if failures:
        _fail_together(env, failures, save_dir, tag)


def commit_checkpoint(env: DistEnv, save_dir: Path, tag: str, commit: Callable[[], None]) -> None:
    """Run `commit` (writing `latest`) on rank 0; if it fails, every rank raises and the folder is removed."""
    error = None
    if env.is_main:
        try:
            commit()
        except OSError as exc:
            error = _describe(exc, exc.filename or save_dir)
    failures = _failures(env, error)
    if failures:
        _fail_together(env, failures, save_dir, tag)
