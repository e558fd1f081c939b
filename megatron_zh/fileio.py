"""Crash-safe file writing: nothing that looks complete is on disk until it is complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _current_umask() -> int:
    # Linux reports the umask without changing it; os.umask() can only read it by setting it (racy).
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh, unique name in the same directory as `path` (same filesystem, so rename is atomic).

    mkstemp creates the file 0600; give it the mode a plain open() would have, so the renamed result
    is readable by the same people as any other output (shared datasets, checkpoints on a cluster).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
    finally:
        os.close(fd)
    return Path(tmp)


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
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
