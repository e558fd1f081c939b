"""What a preprocessing run reads: its inputs as an ordered list of units, and a shard's share of them.

A unit is one stream of documents: a file, or one member of a `.zip`/`.tar` archive (archives.py). What a
unit holds is read from its name: an optional compression suffix (`.gz`, `.bz2`, `.xz`, `.zst`) on top of
one of the corpus formats (formats.py: plain text, JSON lines, Parquet).

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
from pathlib import Path, PurePosixPath

from megatron_zh.data.preprocess.archives import ZSTD_TAR_SUFFIXES, check_zip_member, open_tar, read_errors
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.formats import FormatName, InputFormat, recognise
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.log import get_logger

logger = get_logger(__name__)

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", *ZSTD_TAR_SUFFIXES)


@dataclass(frozen=True)
class Unit:
    """One stream of documents: a file, or a member of an archive."""

    path: Path
    member: str | None  # the member's name inside the archive at `path`
    archive: str | None  # "zip" or "tar"
    compression: str | None  # of the unit's own bytes: "gzip", "bz2", "xz", "zstd"
    fmt: FormatName
    size: int  # bytes the unit's stream yields before decompression (file or member size)
    disk_bytes: int  # its share of the bytes on disk, for progress
    # The archive's own record of the member (ZipInfo/TarInfo): opens it without listing the archive again.
    entry: zipfile.ZipInfo | tarfile.TarInfo | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """How errors and logs name it: `corpus.txt.gz`, `wiki.zip:wiki_zh/AA/wiki_00`."""
        return str(self.path) if self.member is None else f"{self.path}:{self.member}"

    def describe(self) -> dict[str, object]:
        """Its entry in PREFIX.meta.json's list of inputs."""
        entry: dict[str, object] = {"path": str(self.path)}
        if self.member is not None:
            entry["member"] = self.member
        entry["bytes"] = self.size
        return entry


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


def _hidden(name: str) -> bool:
    """Dot files and macOS's resource forks: never corpus text."""
    parts = PurePosixPath(name).parts
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _file_unit(path: Path, input_format: InputFormat) -> Unit:
    fmt, compression = content_format(path.name, input_format, str(path))
    size = path.stat().st_size
    return Unit(path, None, None, compression, fmt, size, size)


def _member_unit(
    path: Path,
    name: str,
    kind: str,
    size: int,
    disk_bytes: int,
    entry: zipfile.ZipInfo | tarfile.TarInfo,
    input_format: InputFormat,
) -> Unit:
    where = f"{path}:{name}"
    member_format, compression = content_format(name, input_format, where)
    if not (spec := recognise(name)).streamed:
        raise ConfigError(f"{where}: {spec.label} needs random access; extract it from the archive first")
    return Unit(path, name, kind, compression, member_format, size, disk_bytes, entry)


def _zip_units(path: Path, input_format: InputFormat) -> list[Unit]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir() and not _hidden(i.filename)]
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{path}: not a readable zip archive ({exc}); check the download") from exc
    infos.sort(key=lambda i: i.filename)
    for info in infos:
        check_zip_member(path, info)
    return [
        _member_unit(path, i.filename, "zip", i.file_size, i.compress_size, i, input_format)
        for i in infos
        if i.file_size > 0
    ]


def _tar_units(path: Path, input_format: InputFormat) -> list[Unit]:
    try:
        with open_tar(path) as archive:  # one pass over the archive (decompressing a .tar.gz once)
            members = [m for m in archive.getmembers() if m.isfile() and not _hidden(m.name) and m.size > 0]
    except read_errors() as exc:
        raise DataFormatError(f"{path}: not a readable tar archive ({exc}); check the download") from exc
    members.sort(key=lambda m: m.name)
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
    disk = path.stat().st_size
    return [_member_unit(path, m.name, "tar", m.size, disk * m.size // total, m, input_format) for m in members]


def list_units(patterns: Sequence[str], input_format: InputFormat) -> list[Unit]:
    """Every unit of the inputs, in reading order (see the module docstring)."""
    units: list[Unit] = []
    for path in expand_inputs(patterns):
        kind = archive_kind(path.name)
        if kind == "zip":
            units.extend(_zip_units(path, input_format))
        elif kind == "tar":
            units.extend(_tar_units(path, input_format))
        else:
            units.append(_file_unit(path, input_format))
    return units


def shard_units(units: list[Unit], num_shards: int, shard_index: int) -> list[Unit]:
    """Shard `shard_index`'s contiguous range: shards in index order concatenate back to `units`."""
    if num_shards > len(units):
        raise ConfigError(
            f"--num-shards {num_shards} is more than the {len(units)} input unit(s) (files and archive members); "
            f"use at most {len(units)} shards"
        )
    return units[len(units) * shard_index // num_shards : len(units) * (shard_index + 1) // num_shards]


def units_for(config: PreprocessConfig) -> list[Unit]:
    """The units this run reads: all of them, or its shard's share."""
    return shard_units(list_units(config.inputs, config.input_format), config.num_shards, config.shard_index)


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files named, matched or found under directories, in order: arguments as given, each glob and each
    directory walk sorted by path (so runs are reproducible); errors for anything missing."""
    files: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            found = [f for p in matches for f in _files_under(Path(p))]
            if not found:
                raise ConfigError(f"--input {pattern!r} matches no files")
            files.extend(found)
        elif os.path.isdir(pattern):
            found = _files_under(Path(pattern))
            if not found:
                raise ConfigError(f"--input {pattern}: the directory holds no files")
            files.extend(found)
        elif os.path.isfile(pattern):
            files.append(Path(pattern))
        else:
            raise ConfigError(f"--input {pattern}: no such file or directory")
    return files


def _files_under(path: Path) -> list[Path]:
    """A file itself, or a directory's files (recursively, sorted by path, dot files and dot directories left out)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    found: list[Path] = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root, n) for n in names if not n.startswith(".") and os.path.isfile(os.path.join(root, n)))
    # By path components: a depth-first walk with each directory's entries sorted (`a/z.txt` before `a-b.txt`).
    return sorted(found, key=lambda p: p.parts)
