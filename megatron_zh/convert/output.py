"""Output folders that appear whole or not at all: build beside the target, rename into place when done."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from megatron_zh.errors import ConfigError
from megatron_zh.fileio import fsync_path, fsync_tree
from megatron_zh.storage import naming


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
