"""Does an output overlap an input? One answer for every tool, whatever the spelling of the paths.

`dir//name`, `a/../dir/name`, a symlink or a hard link to an input all name the input: paths are
compared after `os.path.realpath`, and existing files also by `os.path.samefile` (same inode).
And is an output prefix (PREFIX_text_document.bin, PREFIX.idx) a prefix, not "" or a folder?
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


def refuse_directory_prefix(prefix: str, writes: str, *, flag: str = "--output-prefix") -> None:
    """ConfigError if `prefix` names no file to write beside: empty, ending in a separator, or a folder.

    `writes` says which files the prefix names, e.g. "PREFIX.bin/.idx"."""
    if prefix and not prefix.endswith(("/", os.sep)) and not os.path.isdir(prefix):
        return
    what = "is empty" if not prefix else "names a directory"
    example = os.path.join(prefix or "data", "corpus")
    raise ConfigError(
        f"{flag} {prefix!r} {what}; give a path prefix for the files it writes ({writes}), e.g. {flag} {example}"
    )
