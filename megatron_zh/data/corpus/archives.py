"""Opening the archives corpora come in: tar (plain, gzip, bzip2, xz, zstd) and zip, checked before any work.

tarfile reads .tar, .tar.gz, .tar.bz2 and .tar.xz itself. Python 3.11 has no zstd, and a zstd stream
can only be read forwards, while tarfile seeks: to a member's data (forwards, when members are read
in the order they are stored) and back (when the name order differs from the stored order). So a
.tar.zst goes through `_RewindableZstd`, which serves forward seeks by decompressing and skipping,
and a backward seek by starting the stream again, as tarfile does for gzip (zstd_stream.ZstdReader
decompresses, and refuses a truncated file).

Members that are not corpus text are skipped, each with its reason (`member_skip_reason`): links (a
hard link repeats another member's bytes; a symbolic link's are a path), dot files and macOS resource
forks, empty members, and names that lead out of the archive (`../x`, `/x`), which no extraction would
write where they say either.

Zip members that this tool cannot read (encrypted, or a compression method Python lacks, such as
Deflate64 from Windows' "send to compressed folder") are refused when the archive is listed, before
any output is written, naming the member.

Torch-free: the driver imports it before it starts its workers.
"""

from __future__ import annotations

import io
import lzma
import stat
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any

from megatron_zh.data.corpus.zstd_stream import ZstdReader
from megatron_zh.errors import DataFormatError

ZSTD_TAR_SUFFIXES = (".tar.zst", ".tzst")
# A tar's own compression, by name ending (readers.damage reads it whole to check it).
TAR_COMPRESSIONS = {
    ".tar.gz": "gzip",
    ".tgz": "gzip",
    ".tar.bz2": "bz2",
    ".tbz2": "bz2",
    ".tar.xz": "xz",
    ".txz": "xz",
    **dict.fromkeys(ZSTD_TAR_SUFFIXES, "zstd"),
}
_READABLE_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# The methods found in the wild that zipfile lacks (APPNOTE.TXT 4.4.5), to name them in the refusal.
_ZIP_METHOD_NAMES = {6: "Implode", 9: "Deflate64", 93: "Zstandard", 95: "XZ", 98: "PPMd", 99: "WinZip AES"}
_SKIP_BYTES = 1 << 20


class _RewindableZstd(io.RawIOBase):
    """A .zst file as a seekable stream of its decompressed bytes (backward seeks restart the stream)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[bytes] | None = None
        self._reader: ZstdReader
        self._position: int
        self._restart()

    def _restart(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self._path, "rb")
        self._reader = ZstdReader(self._file)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        count = self._reader.readinto(buffer)
        self._position += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a zstd stream has no known end to seek from")
        if offset < self._position:
            self._restart()
        skip = bytearray(min(max(offset - self._position, 0), _SKIP_BYTES))
        while self._position < offset:
            if not self.readinto(memoryview(skip)[: offset - self._position]):
                break  # past the end: the next read returns nothing, as for a file
        return self._position

    def close(self) -> None:
        if not self.closed and self._file is not None:
            self._file.close()
        super().close()


class _ZstdTarFile(tarfile.TarFile):
    """A TarFile that owns the zstd stream it reads (tarfile leaves a passed-in file object open)."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.fileobj.close()


def read_errors() -> tuple[type[BaseException], ...]:
    """What a damaged or truncated file raises while it is listed or decompressed (zstandard's error if loaded)."""
    errors: list[type[BaseException]] = [
        OSError,  # gzip.BadGzipFile, bz2's "Invalid data stream", a member cut short
        EOFError,
        zlib.error,  # corrupt deflate data, in a .gz or a zip member
        zipfile.BadZipFile,
        tarfile.TarError,
        lzma.LZMAError,
    ]
    zstandard = sys.modules.get("zstandard")
    if zstandard is not None:
        errors.append(zstandard.ZstdError)
    return tuple(errors)


def open_tar(path: Path) -> tarfile.TarFile:
    """A tar archive opened for reading, whatever its compression. Raises what tarfile raises."""
    if path.name.lower().endswith(ZSTD_TAR_SUFFIXES):
        stream = _RewindableZstd(path)
        try:
            return _ZstdTarFile.open(fileobj=stream, mode="r:")
        except BaseException:
            stream.close()
            raise
    return tarfile.open(path, "r:*")


def tar_compression(name: str) -> str | None:
    """ "gzip", "bz2", "xz" or "zstd" for a compressed tar called `name`; None for a plain one."""
    return next((kind for suffix, kind in TAR_COMPRESSIONS.items() if name.lower().endswith(suffix)), None)


def name_skip_reason(name: str) -> str | None:
    """Why a member (or a file under a directory) called `name` is not corpus text, or None."""
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts:
        return "its path leads out of the archive (absolute, or through ..)"
    if "__MACOSX" in parts:
        return "a macOS resource fork (__MACOSX)"
    if any(part.startswith(".") for part in parts):
        return "a dot file (hidden)"
    return None


def tar_skip_reason(member: tarfile.TarInfo) -> str | None:
    """Why a tar member (not a directory) is not read, or None."""
    if member.islnk():
        return f"a hard link to {member.linkname} (the same bytes as that member)"
    if member.issym():
        return f"a symbolic link to {member.linkname}"
    if not member.isfile():
        return "not a regular file (a device or a pipe)"
    return name_skip_reason(member.name) or ("empty" if member.size == 0 else None)


def zip_skip_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member (not a directory) is not read, or None."""
    if stat.S_ISLNK(info.external_attr >> 16):  # Unix zips keep the mode in the high bytes
        return "a symbolic link (its bytes are the path it points to)"
    return name_skip_reason(info.filename) or ("empty" if info.file_size == 0 else None)


def check_zip_member(path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse a zip member this tool cannot read, naming it and the way out."""
    where = f"{path}:{info.filename}"
    if info.flag_bits & 0x1:
        raise DataFormatError(
            f"{where} is encrypted: this tool takes no passwords; extract the archive (unzip -P ...) "
            "and pass the folder"
        )
    if info.compress_type not in _READABLE_ZIP_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, f"zip method {info.compress_type}")
        raise DataFormatError(
            f"{where} is compressed with {method}, which Python's zipfile cannot read; extract the archive "
            "(7z x or unzip) and pass the folder, or repack it with Deflate"
        )
