"""What a preprocessing run reads: its inputs as an ordered list of units, and a shard's share of them.

A unit is one stream of documents: a file, or one member of a `.zip`/`.tar` archive (archives.py). What a
unit holds is read from its name: an optional compression suffix (`.gz`, `.bz2`, `.xz`, `.zst`) on top of
one of the corpus formats (formats.py: plain text, JSON lines, Parquet).

What is not read is said: every file and member left out (dot files, links, a file given twice, the
.bin/.idx of an earlier run, ...) is a `Skipped` with its reason, logged and counted by the driver.
A file named twice (directly, through a glob or a directory) is read once, where it first appears:
a corpus wants each document once (`--dedup` exists for the copies it holds), lists that overlap are a
normal way to name inputs, and upsampling a source is the blend weights' job, not the input list's.

Each unit carries the size, modification time and inode its file had when it was listed
(`FileStamp`): the reader compares them once the unit is read, so a file that changes meanwhile stops
the run instead of giving a dataset of part of it, or of two versions.

The order is fixed by the names alone, so every machine of a sharded run sees the same list:
`--input` arguments in the order given, each directory walked recursively and each glob expanded
in sorted path order, each archive's members in sorted member-name order. A shard takes a
contiguous range of that list, so the shards' outputs concatenated in index order are the
output of one run over everything (`tools/merge_datasets.py`).

Torch-free: the driver imports it before it starts its workers.
"""

from __future__ import annotations

import glob
import os
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_zh.data.corpus.archives import (
    TAR_COMPRESSIONS,
    check_zip_member,
    name_skip_reason,
    open_tar,
    read_errors,
    tar_skip_reason,
    zip_skip_reason,
)
from megatron_zh.data.corpus.formats import FormatName, InputFormat, recognise
from megatron_zh.data.indexed.dataset import INDEX_MAGIC
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.log import get_logger

logger = get_logger(__name__)

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", *TAR_COMPRESSIONS)
DATASET_SUFFIXES = (".bin", ".idx", ".meta.json")  # an indexed dataset's files, PREFIX + these
FileStamp = tuple[int, int, int]  # (size, modification time in ns, inode) of a file on disk


def file_stamp(path: Path) -> FileStamp:
    info = path.stat()
    return info.st_size, info.st_mtime_ns, info.st_ino


@dataclass(frozen=True)
class Place:
    """A file, or a member of the archive at `path`."""

    path: Path
    member: str | None  # the member's name inside the archive at `path`

    @property
    def label(self) -> str:
        """How errors and logs name it: `corpus.txt.gz`, `wiki.zip:wiki_zh/AA/wiki_00`."""
        return str(self.path) if self.member is None else f"{self.path}:{self.member}"

    def describe(self) -> dict[str, object]:
        """Its entry in PREFIX.meta.json's lists of inputs."""
        entry: dict[str, object] = {"path": str(self.path)}
        if self.member is not None:
            entry["member"] = self.member
        return entry


@dataclass(frozen=True)
class Unit(Place):
    """One stream of documents: a file, or a member of an archive."""

    archive: str | None  # "zip" or "tar"
    compression: str | None  # of the unit's own bytes: "gzip", "bz2", "xz", "zstd"
    fmt: FormatName
    size: int  # bytes the unit's stream yields before decompression (file or member size)
    disk_bytes: int  # its share of the bytes on disk, for progress
    # The archive's own record of the member (ZipInfo/TarInfo): opens it without listing the archive again.
    entry: zipfile.ZipInfo | tarfile.TarInfo | None = field(default=None, compare=False, repr=False)
    stamp: FileStamp | None = field(default=None, compare=False, repr=False)  # its file's, when listed

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "bytes": self.size}


@dataclass(frozen=True)
class Skipped(Place):
    """A file or archive member that is not read, and why."""

    reason: str

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "reason": self.reason}


@dataclass
class Inputs:
    """What a run reads (its units, in order), and what it leaves out."""

    units: list[Unit]
    skipped: list[Skipped]


def archive_kind(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(ZIP_SUFFIXES):
        return "zip"
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def split_compression(name: str) -> tuple[str, str | None]:
    """("corpus.jsonl", "zstd") for "corpus.jsonl.zst"; (name, None) when uncompressed."""
    stem, suffix = os.path.splitext(name)
    compression = COMPRESSIONS.get(suffix.lower())
    return (stem, compression) if compression else (name, None)


def content_format(name: str, input_format: InputFormat, where: str) -> tuple[FormatName, str | None]:
    """(format, compression) of a file or member named `name`; `where` names it in errors."""
    stem, compression = split_compression(name)
    if archive_kind(stem) is not None:
        raise ConfigError(
            f"{where}: a compressed or nested archive ({name}) cannot be streamed; "
            "use .zip, .tar, .tar.gz, .tar.bz2, .tar.xz or .tar.zst, or extract it first"
        )
    spec = recognise(stem, input_format)
    if not spec.streamed and compression is not None:
        raise ConfigError(
            f"{where}: {spec.label} is read with random access (it compresses its own pages); decompress {name}"
        )
    return spec.name, compression


def _file_unit(path: Path, input_format: InputFormat) -> Unit:
    fmt, compression = content_format(path.name, input_format, str(path))
    stamp = file_stamp(path)
    return Unit(path, None, None, compression, fmt, stamp[0], stamp[0], stamp=stamp)


def _member_unit(
    path: Path,
    name: str,
    kind: str,
    size: int,
    disk_bytes: int,
    entry: zipfile.ZipInfo | tarfile.TarInfo,
    input_format: InputFormat,
    stamp: FileStamp,
) -> Unit:
    where = f"{path}:{name}"
    member_format, compression = content_format(name, input_format, where)
    if not (spec := recognise(name)).streamed:
        raise ConfigError(f"{where}: {spec.label} needs random access; extract it from the archive first")
    return Unit(path, name, kind, compression, member_format, size, disk_bytes, entry, stamp)


def _zip_units(path: Path, input_format: InputFormat, skipped: list[Skipped]) -> list[Unit]:
    stamp = file_stamp(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = sorted((i for i in archive.infolist() if not i.is_dir()), key=lambda i: i.filename)
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{path}: not a readable zip archive ({exc}); check the download") from exc
    kept = []
    for info in infos:
        reason = zip_skip_reason(info)
        if reason is None:
            check_zip_member(path, info)
            kept.append(info)
        else:
            skipped.append(Skipped(path, info.filename, reason))
    return [_member_unit(path, i.filename, "zip", i.file_size, i.compress_size, i, input_format, stamp) for i in kept]


def _tar_units(path: Path, input_format: InputFormat, skipped: list[Skipped]) -> list[Unit]:
    stamp = file_stamp(path)
    try:
        with open_tar(path) as archive:  # one pass over the archive (decompressing a .tar.gz once)
            listed = sorted((m for m in archive.getmembers() if not m.isdir()), key=lambda m: m.name)
    except read_errors() as exc:
        raise DataFormatError(f"{path}: not a readable tar archive ({exc}); check the download") from exc
    members = []
    for member in listed:
        reason = tar_skip_reason(member)
        if reason is None:
            members.append(member)
        else:
            skipped.append(Skipped(path, member.name, reason))
    offsets = [m.offset_data for m in members]
    steps_back = sum(b < a for a, b in zip(offsets, offsets[1:]))
    if steps_back and not path.name.lower().endswith(".tar"):
        # A compressed stream can only be re-read from its start to go back.
        logger.warning(
            "%s: members are not stored in name order, so reading them in name order decompresses the archive "
            "%d more time(s); repack it with `tar --sort=name` (or use .zip) to read it in one pass",
            path,
            steps_back,
        )
    total = sum(m.size for m in members) or 1
    return [
        _member_unit(path, m.name, "tar", m.size, stamp[0] * m.size // total, m, input_format, stamp) for m in members
    ]


def list_inputs(patterns: Sequence[str], input_format: InputFormat) -> Inputs:
    """Every unit of the inputs, in reading order (see the module docstring), and what is skipped."""
    files, skipped = expand_inputs(patterns)
    units: list[Unit] = []
    for path in files:
        kind = archive_kind(path.name)
        if kind == "zip":
            units.extend(_zip_units(path, input_format, skipped))
        elif kind == "tar":
            units.extend(_tar_units(path, input_format, skipped))
        else:
            units.append(_file_unit(path, input_format))
    if not units:
        raise DataFormatError(f"nothing to read in --input {' '.join(patterns)}: {_nothing_read(skipped)}")
    return Inputs(units, skipped)


def _nothing_read(skipped: list[Skipped], shown: int = 3) -> str:
    if not skipped:
        return "no file or archive member holds data"
    listed = "; ".join(f"{s.label}: {s.reason}" for s in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"every file and archive member was skipped ({listed}{more})"


def shard_units(units: list[Unit], num_shards: int, shard_index: int) -> list[Unit]:
    """Shard `shard_index`'s contiguous range: shards in index order concatenate back to `units`."""
    if num_shards > len(units):
        raise ConfigError(
            f"--num-shards {num_shards} is more than the {len(units)} input unit(s) (files and archive members); "
            f"use at most {len(units)} shards"
        )
    return units[len(units) * shard_index // num_shards : len(units) * (shard_index + 1) // num_shards]


def units_for(config: PreprocessConfig) -> Inputs:
    """The units this run reads (all of them, or its shard's share), and every input skipped."""
    inputs = list_inputs(config.inputs, config.input_format)
    return Inputs(shard_units(inputs.units, config.num_shards, config.shard_index), inputs.skipped)


def log_skipped(skipped: list[Skipped], shown: int) -> None:
    """One line per skipped input, with its reason, up to `shown` of them."""
    for entry in skipped[:shown]:
        logger.warning("%s: %s; skipped", entry.label, entry.reason)
    if len(skipped) > shown:
        logger.warning("%d more inputs skipped (counted, not shown)", len(skipped) - shown)


def expand_inputs(patterns: Sequence[str]) -> tuple[list[Path], list[Skipped]]:
    """Files named, matched or found under directories, in order: arguments as given, each glob and each
    directory walk sorted by path (so runs are reproducible); and the files left out, with why. Errors for
    anything missing, and for a preprocessed dataset's file named as an input."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    first_named: dict[tuple[int, int], Path] = {}  # (device, inode) -> the path it was first seen under
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = [f for p in sorted(glob.glob(pattern, recursive=True)) for f in _files_under(Path(p), skipped)]
            if not found and not skipped:
                raise ConfigError(f"--input {pattern!r} matches no files")
        elif os.path.isdir(pattern):
            found = _files_under(Path(pattern), skipped)
            if not found and not skipped:
                raise ConfigError(f"--input {pattern}: the directory holds no files")
        elif os.path.isfile(pattern):
            if _is_dataset_file(Path(pattern)):
                raise ConfigError(
                    f"--input {pattern}: {_DATASET_FILE}, not a corpus; leave it out (tools/merge_datasets.py "
                    "joins datasets)"
                )
            found = [Path(pattern)]
        else:
            raise ConfigError(f"--input {pattern}: no such file or directory")
        for path in found:
            info = path.stat()
            first = first_named.setdefault((info.st_dev, info.st_ino), path)
            if first is path:
                files.append(path)
            else:
                skipped.append(Skipped(path, None, f"the same file as {first}, which is read once"))
    return files, skipped


_DATASET_FILE = "a preprocessed dataset's file (PREFIX.bin/.idx/.meta.json beside a Megatron PREFIX.idx)"


def _is_dataset_file(path: Path) -> bool:
    """PREFIX.bin, PREFIX.idx or PREFIX.meta.json where PREFIX.idx is a Megatron index (an earlier run's output)."""
    name = path.name
    suffix = next((s for s in DATASET_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        return False
    try:
        with open(path.with_name(name[: -len(suffix)] + ".idx"), "rb") as index:
            return index.read(len(INDEX_MAGIC)) == INDEX_MAGIC
    except OSError:
        return False


def _files_under(path: Path, skipped: list[Skipped]) -> list[Path]:
    """A file itself, or a directory's files (recursively, sorted by path); what is left out goes to `skipped`
    (sorted too): dot files and dot directories (each directory once), files that are not regular, a
    dataset's files."""
    if path.is_file():
        return [] if _skip_file(path, skipped) else [path]
    if not path.is_dir():
        return []
    found: list[Path] = []
    left_out: list[Skipped] = []
    for root, dirs, names in os.walk(path):
        left_out += [Skipped(Path(root, d), None, "a dot directory (hidden), not walked") for d in dirs if d[0] == "."]
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(p for p in (Path(root, n) for n in names) if not _skip_file(p, left_out))
    # By path components: a depth-first walk with each directory's entries sorted (`a/z.txt` before `a-b.txt`).
    skipped.extend(sorted(left_out, key=lambda s: s.path.parts))
    return sorted(found, key=lambda p: p.parts)


def _skip_file(path: Path, skipped: list[Skipped]) -> bool:
    """True (and the reason noted) for a file found by a directory walk or a glob that is not read."""
    if path.name.startswith("."):
        reason: str | None = name_skip_reason(path.name)
    elif not path.is_file():
        reason = "not a regular file (a broken link, a pipe or a socket)"
    elif _is_dataset_file(path):
        reason = f"{_DATASET_FILE}, an earlier run's output"
    else:
        reason = None
    if reason is not None:
        skipped.append(Skipped(path, None, reason))
    return reason is not None
