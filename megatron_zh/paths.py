"""Does an output overlap an input? One answer for every tool, whatever the spelling of the paths.

`dir//name`, `a/../dir/name`, a symlink or a hard link to an input all name the input: paths are
compared after `os.path.realpath`, and existing files also by `os.path.samefile` (same inode).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from megatron_zh.errors import ConfigError

PathLike = str | os.PathLike[str]


def overlap(output: PathLike, source: PathLike) -> str | None:
    """How `output` overlaps `source`: "is", "contains" (an ancestor folder), "lies inside", or None."""
    out, src = os.path.realpath(output), os.path.realpath(source)
    if out == src or _same_file(out, src):
        return "is"
    if src.startswith(out.rstrip(os.sep) + os.sep):
        return "contains"
    if out.startswith(src.rstrip(os.sep) + os.sep):
        return "lies inside"
    return None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): realpath already decided
        return False


def refuse_overlap(output: PathLike, sources: Iterable[tuple[str, PathLike | None]], *, flag: str = "--output") -> None:
    """ConfigError if `output` is, contains or lies inside any source, given as (what it is, path) pairs."""
    for what, source in sources:
        if source is None:
            continue
        how = overlap(output, source)
        if how is None:
            continue
        resolved = ""
        if os.fspath(output) != os.fspath(source):
            resolved = f" ({os.path.realpath(output)} vs {os.path.realpath(source)})"
        raise ConfigError(
            f"{flag} {os.fspath(output)} {how} {what} {os.fspath(source)}{resolved}: writing it could destroy "
            f"the input; choose another {flag}"
        )
