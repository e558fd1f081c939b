"""Storage errors (read-only file system, disk full, a file where a directory is needed) as one line.

Writers wrap their work in `naming(output)`, so an OSError that names no path (a failed write() or
fsync() carries none) or only a hidden temporary beside the output names the output instead;
`megatron_zh.cli.run_cli` prints `describe_os_error(exc)` instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

# What to do about each errno a path on disk can fail with.
_HINTS = {
    errno.EROFS: "the file system is read-only; write the output somewhere writable",
    errno.ENOSPC: "the disk is full; free some space or write the output elsewhere",
    errno.EDQUOT: "the disk quota is used up; free some space or write the output elsewhere",
    errno.EFBIG: "the file is too large for this file system; write the output elsewhere",
    errno.EIO: "the disk reported an I/O error; check it, or write the output elsewhere",
    errno.EACCES: "no permission; fix the permissions or choose another path",
    errno.EPERM: "not permitted; fix the permissions or choose another path",
    errno.ENOTDIR: "part of the path is a file where a directory is needed; choose another path",
    errno.EISDIR: "it is a directory where a file is needed; choose another path",
    errno.EEXIST: "it exists and is not a directory; choose another path",
    errno.ENOENT: "no such file or directory; check the path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}
# Errors of the storage itself: worth one line even when no path is known (e.g. a full stdout).
_STORAGE = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def describe_os_error(exc: OSError) -> str | None:
    """`cannot write PATH: Read-only file system (EROFS); what to do`, or None for other OSErrors."""
    if exc.errno not in _HINTS or (exc.filename is None and exc.errno not in _STORAGE):
        return None
    verb = "cannot write" if exc.errno in _STORAGE else "cannot use"
    where = "the output" if exc.filename is None else os.fsdecode(exc.filename)
    if exc.filename2 is not None:
        where += f" (or {os.fsdecode(exc.filename2)})"
    reason = exc.strerror or os.strerror(exc.errno)
    return f"{verb} {where}: {reason} ({errno.errorcode[exc.errno]}); {_HINTS[exc.errno]}"


def is_temporary_name(path: str | os.PathLike[str]) -> bool:
    """A path in or of a hidden file or folder a writer builds beside its output (`.NAME.*.tmp`, `.NAME.*.old`)."""
    parts = os.fsdecode(path).split(os.sep)
    return any(part.startswith(".") and part.endswith((".tmp", ".old")) for part in parts)


def disk_full(path: str | os.PathLike[str]) -> bool:
    """Whether the file system `path` is (or would be) on has no block left for us."""
    folder = os.path.abspath(os.fspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


@contextlib.contextmanager
def naming(output: str | os.PathLike[str], *, library_errors: bool = False) -> Iterator[None]:
    """Re-raise an OSError that names no path, or only a temporary, as one naming `output`.

    `library_errors`: also a library's own error type (torch.save's RuntimeError, safetensors'
    SafetensorError) when the disk is full afterwards: the cause was ENOSPC, only not as an OSError.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno is None or not (exc.filename is None or is_temporary_name(exc.filename)):
            raise
        # OSError(errno, ...) builds the matching subclass (FileNotFoundError, ...), as the original was.
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(output)) from exc
    except Exception as exc:
        if not library_errors or type(exc).__module__.startswith("megatron_zh") or not disk_full(output):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(output)) from exc
