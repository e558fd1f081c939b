"""Units (files, archive members) read as chunks of whole lines, or by their format's reader, in the main process.

Compressed files and archive members are streamed: decompressed as they are read, never written
out. A compressed stream cannot be split by byte offset, so the main process decompresses and cuts
the stream into chunks of whole lines (whole documents with `--document-boundary blank-line`: a cut
is made only after a blank line) and the workers tokenize them, as for plain text. zlib, bz2, lzma
and zstandard release the GIL and decompress far faster than the workers tokenize (measured by
`bench/bench_preprocess.py --compressed`), so this costs little throughput and keeps every worker
busy even on one large compressed file. Formats that are not streamed (Parquet) are read by their own
`read_file` (formats.py).

Each unit's first bytes are checked: a UTF-16/UTF-32 byte-order mark, or mostly NUL bytes, stops the
run with the command that converts the file; a UTF-8 byte-order mark is dropped.

Torch-free: the driver imports it before it starts its workers.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import shlex
import tarfile
import zipfile
from collections.abc import Iterator
from typing import IO, Any

from megatron_zh.data.preprocess.archives import open_tar, read_errors
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.formats import FORMATS, Chunk
from megatron_zh.data.preprocess.sources import Unit
from megatron_zh.data.preprocess.zstd_stream import ZstdReader
from megatron_zh.errors import DataFormatError

UTF8_BOM = b"\xef\xbb\xbf"
# Longest first: a UTF-32LE mark begins with the UTF-16LE one.
WIDE_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\xfe\xff", "UTF-16BE"),
    (b"\xff\xfe", "UTF-16LE"),
)
SNIFF_BYTES = 1 << 16
# A document longer than this without a blank line means the input is not blank-line separated.
MAX_DOCUMENT_BYTES = 256 << 20
Stream = IO[bytes] | io.BufferedIOBase  # a file, or a decompressor's reader (GzipFile, LZMAFile, ...)
_DECOMPRESS_COMMANDS = {"gzip": "gzip -dc", "bz2": "bzip2 -dc", "xz": "xz -dc", "zstd": "zstd -dc"}


def sniff_wide_encoding(head: bytes) -> tuple[str, str | None] | None:
    """(what was seen, iconv's name for it) if `head` is UTF-16/UTF-32 rather than UTF-8, else None.

    The name is None for NULs in no code-unit pattern: binary data, which no conversion makes text."""
    for bom, name in WIDE_BOMS:
        if head.startswith(bom):
            return f"{name} (it starts with that byte-order mark)", name[:6]  # iconv reads the mark: UTF-16, UTF-32
    sample = head[:SNIFF_BYTES]
    if len(sample) < 4 or sample.count(0) * 4 < len(sample):  # a NUL in UTF-8 text is rare; a quarter is not text
        return None
    # Mostly-ASCII text in a wide encoding: NULs fill the high bytes of each code unit.
    nuls_at = [sample[i::4].count(0) for i in range(4)]
    if min(nuls_at) * 2 > max(nuls_at):  # NULs everywhere, no code-unit pattern: binary, not text
        return "mostly NUL bytes (binary data, not UTF-8 text)", None
    if sum(nuls_at) > 0.6 * len(sample):
        name = "UTF-32LE" if nuls_at[0] < nuls_at[3] else "UTF-32BE"
    else:
        name = "UTF-16LE" if nuls_at[1] + nuls_at[3] > nuls_at[0] + nuls_at[2] else "UTF-16BE"
    return f"{name} without a byte-order mark (mostly NUL bytes)", name


def _check_encoding(head: bytes, unit: Unit) -> None:
    found = sniff_wide_encoding(head)
    if found is None:
        return
    seen, iconv_name = found
    if iconv_name is None:
        raise DataFormatError(f"{unit.label}: {seen}; leave it out of --input")
    raise DataFormatError(f"{unit.label}: {seen}, not UTF-8; convert it first: {_convert_command(unit, iconv_name)}")


def _convert_command(unit: Unit, encoding: str) -> str:
    """The shell command that writes the unit's text as UTF-8 beside its file."""
    name = unit.member if unit.member is not None else unit.path.name
    stem = name.rsplit("/", 1)[-1]
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        stem = stem.removesuffix(suffix)
    base, dot, ext = stem.rpartition(".")
    target = shlex.quote(str(unit.path.parent / (f"{base}.utf8.{ext}" if dot else f"{stem}.utf8")))
    iconv = f"iconv -f {encoding} -t UTF-8"
    path = shlex.quote(str(unit.path))
    if unit.archive == "zip":
        source = f"unzip -p {path} {shlex.quote(name)}"
    elif unit.archive == "tar":
        source = f"tar -xOf {path} {shlex.quote(name)}"
    elif unit.compression is None:
        return f"{iconv} {path} > {target}"
    else:
        source = f"{_DECOMPRESS_COMMANDS[unit.compression]} {path}"
    if unit.compression is not None and unit.archive is not None:
        source += f" | {_DECOMPRESS_COMMANDS[unit.compression]}"
    return f"{source} | {iconv} > {target}"


def _decompressed(raw: IO[bytes], compression: str | None) -> Stream:
    if compression is None:
        return raw
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(raw)
    if compression == "xz":
        return lzma.LZMAFile(raw)
    return io.BufferedReader(ZstdReader(raw), 1 << 20)


class _OpenArchive:
    """The archive the current unit is in, kept open while consecutive units come from it."""

    def __init__(self) -> None:
        self.path: Any = None
        self.handle: zipfile.ZipFile | tarfile.TarFile | None = None

    def get(self, unit: Unit) -> zipfile.ZipFile | tarfile.TarFile:
        if self.handle is None or self.path != unit.path:
            self.close()
            self.handle = zipfile.ZipFile(unit.path) if unit.archive == "zip" else open_tar(unit.path)
            self.path = unit.path
        return self.handle

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.handle = self.path = None


def _open_outer(unit: Unit, archives: _OpenArchive, stack: contextlib.ExitStack) -> IO[bytes]:
    """The unit's bytes before its own decompression: the file, or the archive member."""
    if unit.archive is None:
        return stack.enter_context(open(unit.path, "rb"))
    archive = archives.get(unit)
    if isinstance(archive, zipfile.ZipFile):
        assert isinstance(unit.entry, zipfile.ZipInfo)
        # ZipExtFile splits lines in Python; a C buffer over it halves the main process's work (measured).
        member: Any = archive.open(unit.entry)  # a ZipExtFile: typeshed types it as a plain IO[bytes]
        return stack.enter_context(io.BufferedReader(member, 1 << 20))
    assert isinstance(unit.entry, tarfile.TarInfo)
    member = archive.extractfile(unit.entry)
    assert member is not None  # regular files only (corpus_sources)
    return stack.enter_context(member)


def _line_chunks(index: int, unit: Unit, stream: Stream, outer: IO[bytes], config: PreprocessConfig) -> Iterator[Chunk]:
    """Chunks of whole lines (whole documents for blank-line boundaries) of one unit's decompressed stream."""
    # Before any line is read: a UTF-16 file may hold no newline byte for a long way.
    _check_encoding(stream.peek(SNIFF_BYTES) if hasattr(stream, "peek") else b"", unit)
    blank_line = config.document_boundary == "blank-line"
    line_no, assigned = 1, 0
    pending: list[bytes] = []  # blank-line boundaries: the lines of a document not yet complete
    previous: Chunk | None = None  # held back one step, so that the last chunk gets the rest of the progress
    while lines := stream.readlines(config.chunk_bytes):
        if line_no == 1 and not pending:
            lines[0] = lines[0].removeprefix(UTF8_BOM)
        if blank_line:
            # Cut after the last blank line; the lines after it begin the next chunk's first document.
            cut = next((i + 1 for i in range(len(lines) - 1, -1, -1) if not lines[i].strip()), 0)
            if not cut:
                pending += lines
                if sum(map(len, pending)) > MAX_DOCUMENT_BYTES:
                    raise DataFormatError(
                        f"{unit.label}:{line_no}: no blank line in {MAX_DOCUMENT_BYTES >> 20} MB, so this input is "
                        "not blank-line separated: use --document-boundary line"
                    )
                continue
            lines, pending = pending + lines[:cut], lines[cut:]
        if previous is not None:
            yield previous
        # Progress counts bytes on disk: how far into the file or archive member the reading has got.
        done = min(outer.tell() * unit.disk_bytes // max(unit.size, 1), unit.disk_bytes)
        previous = Chunk(index, unit.fmt, line_no, lines, input_bytes=sum(map(len, lines)))
        previous.disk_bytes, assigned = max(done - assigned, 0), max(done, assigned)
        line_no += len(lines)
    if pending:
        if previous is not None:
            yield previous
        previous = Chunk(index, unit.fmt, line_no, pending, input_bytes=sum(map(len, pending)))
    if previous is not None:
        previous.disk_bytes += unit.disk_bytes - assigned
        yield previous


def read_units(units: list[Unit], config: PreprocessConfig) -> Iterator[Chunk]:
    """Every unit in order, as chunks; an archive stays open while its members are read."""
    archives = _OpenArchive()
    try:
        for index, unit in enumerate(units):
            read_file = FORMATS[unit.fmt].read_file
            if read_file is not None:
                yield from read_file(index, unit.path, unit.disk_bytes, config.json_keys, config.chunk_bytes)
                continue
            with contextlib.ExitStack() as stack:
                outer = _open_outer(unit, archives, stack)
                stream = _decompressed(outer, unit.compression)
                stack.callback(stream.close)  # a decompressor leaves the file under it open: the stack closes both
                try:
                    yield from _line_chunks(index, unit, stream, outer, config)
                except read_errors() as exc:
                    raise DataFormatError(f"{unit.label}: cannot be read to the end ({exc}); check the file") from exc
    finally:
        archives.close()
