"""Crash-safe writing (no file or folder that looks complete is on disk until it is complete), and JSON reading.

Files: `atomic_write` (a temporary sibling renamed into place). Folders: `staging_directory` + `commit_directory`
(built beside the target, renamed into place when done; an existing target is swapped out, then deleted).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from megatron_zh.errors import ConfigError, MegatronZhError
from megatron_zh.storage import naming


def _current_umask() -> int:
    # Linux reports the umask without changing it; os.umask() can only read it by setting it (racy).
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _owner() -> str:
    """`HOST-PID` of this process, as temporary names carry it (the host: a shared disk has many)."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', socket.gethostname())}-{os.getpid()}"


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh, unique name in the same directory as `path` (same filesystem, so rename is atomic).

    The name is `.NAME.HOST-PID.RANDOM.tmp`: a run killed before it could clean up leaves names
    the next run into the same place recognises as stale (`remove_stale_temporaries`).
    mkstemp creates the file 0600; give it the mode a plain open() would have, so the renamed result
    is readable by the same people as any other output (shared datasets, checkpoints on a cluster).
    """
    path = Path(path)
    with naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent or ".")
        try:
            os.fchmod(fd, 0o666 & ~_current_umask())
        except BaseException:
            os.unlink(tmp)
            raise
        finally:
            os.close(fd)
    return Path(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    with contextlib.suppress(OSError):  # a zombie has exited: it writes nothing any more
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of `path` left by dead processes of this host; returns what was deleted.

    Only names `temporary_sibling` makes count, and only when their HOST is this one and their PID
    no longer runs: another live run's files (or another machine's, on a shared disk) stay.
    """
    path = Path(path)
    host, _ = _owner().rsplit("-", 1)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(host)}-(\d+)\.[^.]+\.tmp")
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(path.parent or "."):
            match = pattern.fullmatch(entry.name)
            if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a directory's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file below `folder`, then `folder` itself."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            fsync_path(path)
    fsync_path(folder)


def commit(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """fsync `tmp` and atomically rename it to `final`."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; rename it onto `path` only if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary file is removed and `path` is untouched.
    """
    if "r" in mode or "a" in mode:
        raise ValueError(f"atomic_write is for fresh writes, not mode {mode!r}")
    with naming(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with naming(path), open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        with naming(path):
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json_object(path: str | os.PathLike, error: type[MegatronZhError], what: str = "") -> dict[str, Any]:
    """The JSON object in `path`; `error` (naming `what` and the path) if it is unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"cannot read {what}{path}: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what}{path} is not a JSON object")
    return data


# ---------------------------------------------------------------------------------------- folders


def check_output_directory(final: Path, overwrite: bool) -> None:
    """Refuse to replace an existing file, or a non-empty folder unless `overwrite`."""
    if final.exists() and not final.is_dir():
        raise ConfigError(f"output {final} exists and is not a directory; choose another --output")
    if final.is_dir() and any(final.iterdir()) and not overwrite:
        raise ConfigError(
            f"output directory {final} exists and is not empty; pass --overwrite to replace it "
            "(it is replaced only after the new one is complete)"
        )


@contextlib.contextmanager
def staging_directory(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A new empty folder beside `final` to build the output in; removed on exit unless committed."""
    final = Path(final)
    check_output_directory(final, overwrite)
    staging = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    with naming(final):  # a read-only or full disk, a file where a folder is needed: say `final`
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # mode from the umask, like any other output
    try:
        with naming(final, library_errors=True):
            yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # already gone when committed


def commit_directory(staging: Path, final: str | os.PathLike) -> None:
    """Make `staging` (complete, on disk) be `final`; an existing `final` is swapped out, then deleted."""
    final = Path(final)
    with naming(final):
        _commit_directory(staging, final)


def _commit_directory(staging: Path, final: Path) -> None:
    fsync_tree(staging)
    old = None
    if final.is_dir() and any(final.iterdir()):
        old = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(final, old)
    elif final.is_dir():
        final.rmdir()
    os.replace(staging, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
