"""Crash-safe writing (no file or folder that looks complete is on disk until it is complete), and JSON reading.

Files: `atomic_write` (a temporary sibling renamed into place; `write_figure` for PNGs). Folders:
`staging_directory` + `commit_directory` (built beside the target, renamed into place when done; an existing
target is swapped out, then deleted). JSON: `loads_json` (json.loads that refuses a key written twice in one
object) and `read_json_object`.
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


def write_figure(figure: Any, output: str | os.PathLike) -> Path:
    """A matplotlib figure as a PNG at `output`, which appears only once complete; the figure is then freed."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_write(output, "wb") as f:
        figure.savefig(f, format="png")
    plt.close(figure)
    return Path(output)


class DuplicateKeyError(json.JSONDecodeError):
    """A JSON object with a key written twice: `json` would silently keep the last one.

    A JSONDecodeError (msg, lineno, colno name the second occurrence), so every reader that handles
    malformed JSON handles this too.
    """


class _KeyWrittenTwice(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _KeyWrittenTwice
    return obj


# One decoder for every call: json.loads(text, object_pairs_hook=...) builds a new one each time, which costs
# more than parsing a short JSON-lines record.
_UNIQUE_KEYS = json.JSONDecoder(object_pairs_hook=_unique_keys)

# A JSON string, or one of the characters that shape a document; everything else (numbers, true,
# false, null, blanks) lies between the matches. Strings are matched whole, so brackets in them don't count.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]')


def _first_duplicate(text: str) -> tuple[str, int, int] | None:
    """(the key's path, offset of its first and of its second occurrence) of the first key written twice."""
    # One frame per open container: an object's keys seen so far (offsets), or None for an array.
    keys: list[dict[str, int] | None] = []
    names: list[str] = []  # the path to each open container: its key in the parent, or [index]
    indices: list[int] = []  # the element each open array is at
    current: list[str] = []  # the key each open object is at
    previous = ""
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token[0] == '"':
            seen = keys[-1] if keys else None
            if seen is not None and previous in ("{", ","):
                key = json.loads(token)
                if key in seen:
                    return ".".join([*names[1:], key]).replace(".[", "["), seen[key], match.start()
                seen[key] = match.start()
                current[-1] = key
        elif token in "{[":
            parent = keys[-1] if keys else {}
            names.append(f"[{indices[-1]}]" if parent is None else (current[-1] if current else ""))
            keys.append({} if token == "{" else None)
            indices.append(0)
            current.append("")
        elif token in "}]":
            for stack in (keys, names, indices, current):
                stack.pop()
        elif token == "," and keys and keys[-1] is None:
            indices[-1] += 1
        previous = token[0]
    return None


def _duplicate_key_error(text: str) -> DuplicateKeyError:
    found = _first_duplicate(text)
    if found is None:  # cannot happen for text json parsed this far; still say what was found
        return DuplicateKeyError("a key is written twice in one object", text, 0)
    path, first, second = found

    def line_column(offset: int) -> tuple[int, int]:
        return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)

    (line_a, column_a), (line_b, column_b) = line_column(first), line_column(second)
    if line_a != line_b:
        where = f"lines {line_a} and {line_b}"
    elif "\n" in text.strip():
        where = f"line {line_a}, columns {column_a} and {column_b}"
    else:  # a one-line document (a JSON-lines record): the caller names the line
        where = f"columns {column_a} and {column_b}"
    message = f'key "{path}" is written twice ({where}); JSON readers silently keep only the last: remove one'
    return DuplicateKeyError(message, text, second)


def loads_json(text: str) -> Any:
    """json.loads, but a key written twice in one object raises DuplicateKeyError (naming the key and both places)
    instead of silently keeping the last (a ds_config's second "train_batch_size" would win unseen)."""
    try:
        return _UNIQUE_KEYS.decode(text)
    except _KeyWrittenTwice:
        raise _duplicate_key_error(text) from None


def json_type_name(value: object) -> str:
    """What JSON calls the type of a parsed value: object, array, string, number, boolean, null."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null", int: "number"}
    return names.get(type(value), "number" if isinstance(value, float) else type(value).__name__)


def read_json_object(
    path: str | os.PathLike, error: type[MegatronZhError], what: str = "", fix: str = ""
) -> dict[str, Any]:
    """The JSON object in `path`; `error` (naming `what`, the path, the line and `fix`) if it is unreadable, not
    JSON, has a key written twice, or is not an object."""
    suffix = f"; {fix}" if fix else ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what}{path}: {exc}{suffix}") from None
    try:
        data = loads_json(text)
    except DuplicateKeyError as exc:
        raise error(f"{what}{path}: {exc.msg}{suffix}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what}{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}{suffix}") from None
    if not isinstance(data, dict):
        raise error(f"{what}{path} holds a JSON {json_type_name(data)}, not an object{suffix}")
    return data


# ---------------------------------------------------------------------------------------- folders


def refuse_existing_output(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to replace an existing file unless `overwrite` (the writer then replaces it only once complete)."""
    if not overwrite and os.path.lexists(path):
        raise ConfigError(
            f"output {os.fspath(path)} exists; pass --overwrite to replace it "
            "(it is replaced only after the new one is complete)"
        )


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
