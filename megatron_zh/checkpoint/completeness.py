"""Whether a checkpoint folder holds everything every rank wrote, judged cheaply; and moving one aside.

A global_step<N> folder is complete when it holds

- client_state.json, a valid client state: rank 0 writes it (then `latest`) only after every rank
  has written and fsynced its files, and it records how many ranks wrote the checkpoint;
- mp_rank_00_model_states.pt, whole;
- one ZeRO optimizer file per rank 0 .. world_size-1, all in one layout (zero_pp_rank_* or
  bf16_zero_pp_rank_*), each whole; none for a weights-only checkpoint (a converter's) or one saved
  without ZeRO (then the model-states file holds the optimizer).

"Whole" is `safety.file_damage`: not empty, a zip archive with its directory (which torch.save
writes last, so a file cut short has none) and a data.pkl. Names, sizes and a few KB of each file:
no unpickling, so a directory of large checkpoints is surveyed in milliseconds. The restricted
unpickler (safety.check_checkpoint_files) still reads every file of the one a run starts from.

A folder that is not complete is never deleted by a start or a save: `set_aside` renames it
(layout.aside_name), and with it its universal copy, so nothing a user has is lost by a wrong guess.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from megatron_zh.checkpoint.client_state import ClientState
from megatron_zh.checkpoint.layout import (
    CLIENT_STATE_FILE,
    MODEL_STATES_FILE,
    SHARD_NAME_HELP,
    SHARD_PATTERN,
    TAG_PATTERN,
    AsideReason,
    aside_name,
    universal_tag,
)
from megatron_zh.checkpoint.safety import file_damage
from megatron_zh.errors import CheckpointError
from megatron_zh.fileio import fsync_path


@dataclass(frozen=True)
class Completeness:
    """What a checkpoint folder lacks; complete when `problems` is empty."""

    folder: Path
    problems: tuple[str, ...]  # each names the file: "<folder>/mp_rank_00_model_states.pt is truncated (...)"
    world_size: int | None = None  # ranks that wrote it, when its client state says

    @property
    def complete(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        return "; ".join(self.problems)


def _client_state(folder: Path) -> tuple[ClientState | None, str | None]:
    """The folder's client_state.json, or why it cannot be read."""
    path = folder / CLIENT_STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{path} is missing (rank 0 writes it last, once every rank's files are on disk)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path} cannot be read ({exc})"
    if not isinstance(data, dict):
        return None, f"{path} does not hold a JSON object"
    try:
        return ClientState.from_dict(data, str(path)), None
    except CheckpointError as exc:
        return None, str(exc)


def _shard_problems(folder: Path, writers: int) -> list[str]:
    """One optimizer file per rank that wrote the checkpoint, in one layout."""
    try:
        matches = [m for p in folder.iterdir() if (m := SHARD_PATTERN.match(p.name))]
    except OSError as exc:
        return [f"{folder} cannot be listed ({exc.strerror or exc})"]
    if len({bool(m.group(1)) for m in matches}) > 1:
        return [f"{folder} holds both zero_pp_rank_* and bf16_zero_pp_rank_* optimizer files: it mixes two runs"]
    found = {int(m.group(2)): folder / m.string for m in matches}
    missing = sorted(set(range(writers)) - set(found))
    if missing:
        return [
            f"{folder} has no optimizer shard of rank(s) {', '.join(map(str, missing))} "
            f"(written by {writers} ranks; {SHARD_NAME_HELP})"
        ]
    extra = sorted(set(found) - set(range(writers)))
    if extra:
        return [f"{folder} holds optimizer files of rank(s) {', '.join(map(str, extra))}, but {writers} ranks wrote it"]
    return [f"{found[r]} {damage}" for r in range(writers) if (damage := file_damage(found[r])) is not None]


def inspect_checkpoint(folder: Path, info: ClientState | None = None, zero: bool = True) -> Completeness:
    """What `folder` lacks. `info`: its client state when already known (a checkpoint another tool wrote has
    no client_state.json; the caller read it from the model-states file). `zero`: whether a training
    checkpoint of this run holds ZeRO optimizer files (False for ZeRO stage 0)."""
    if not folder.is_dir():
        return Completeness(folder, (f"{folder} does not exist",))
    problems: list[str] = []
    if info is None:
        info, problem = _client_state(folder)
        if problem is not None:
            problems.append(problem)
    damage = file_damage(folder / MODEL_STATES_FILE)
    if damage is not None:
        problems.append(f"{folder / MODEL_STATES_FILE} {damage}")
    if info is not None and zero and not info.weights_only:
        problems += _shard_problems(folder, info.world_size)
    return Completeness(folder, tuple(problems), None if info is None else info.world_size)


def checkpoint_folders(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(N, folder) of every global_step<N> folder in `directory`, oldest first; moved-aside ones are not."""
    directory = Path(directory)
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m.group(1)), p) for p in entries if (m := TAG_PATTERN.match(p.name)) and p.is_dir()]
    return sorted(found)


def complete_checkpoints(directory: str | os.PathLike[str], zero: bool = True) -> list[tuple[int, Path]]:
    """(N, folder) of the complete checkpoints in `directory`, oldest first."""
    return [(n, p) for n, p in checkpoint_folders(directory) if inspect_checkpoint(p, zero=zero).complete]


def list_tags(found: list[tuple[int, Path]]) -> str:
    return ", ".join(p.name for _, p in found) or "none"


def set_aside(folder: Path, reason: AsideReason) -> Path:
    """Rename `folder` (and its universal copy, if any) to a name saying why (layout.aside_name), never
    over an existing one. Returns the new path."""
    target = folder.with_name(aside_name(folder.name, reason))
    suffix = 1
    while target.exists():  # two in the same second
        target = folder.with_name(f"{aside_name(folder.name, reason)}.{suffix}")
        suffix += 1
    os.rename(folder, target)
    cache = folder.with_name(universal_tag(folder.name))
    if cache.is_dir():
        os.rename(cache, target.with_name(universal_tag(folder.name) + target.name[len(folder.name) :]))
    fsync_path(folder.parent)
    return target
