"""Units (files, archive members) read as chunks of whole lines, or by their format's reader, in the main process.

Compressed files and archive members are streamed: decompressed as they are read, never written
out. A compressed stream cannot be split by byte offset, so the main process decompresses and cuts
the stream into chunks of whole lines (whole documents with `--document-boundary blank-line`: a cut
is made only after a blank line) and the workers tokenize them, as for plain text. zlib, bz2, lzma
and zstandard release the GIL and decompress far faster than the workers tokenize (measured by
`bench/bench_preprocess.py --compressed`), so this costs little throughput and keeps every worker
busy even on one large compressed file. Formats that are not streamed (Parquet) are read by their own
`read_file` (formats.py).

Each unit's first bytes are checked before a line is cut: bytes of another format (gzip data named
.txt, a JSON array named .json: formats.misfit), and text that is not UTF-8 (a UTF-16/UTF-32
byte-order mark, UTF-16 without one, GB18030 or Big5: charsets.py) stop the run with what the bytes
are and the command that converts them; a UTF-8 byte-order mark is dropped. Once a unit is read, its
file must be as it was listed (size, modification time, inode): a file that changed meanwhile stops
the run, as does a compressed stream that is corrupt or cut short.

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

from megatron_zh.data.corpus.archives import open_tar, read_errors, tar_compression
from megatron_zh.data.corpus.charsets import (
    SNIFF_BYTES,
    UNKNOWN_ENCODING,
    UTF8_BOM,
    DecodeTally,
    foreign_encoding,
    sniff_head,
)
from megatron_zh.data.corpus.formats import FORMATS, Chunk, misfit
from megatron_zh.data.corpus.zstd_stream import ZstdReader
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.sources import FileStamp, Unit, file_stamp
from megatron_zh.errors import DataFormatError

# A document longer than this without a blank line means the input is not blank-line separated.
MAX_DOCUMENT_BYTES = 256 << 20
Stream = IO[bytes] | io.BufferedIOBase  # a file, or a decompressor's reader (GzipFile, LZMAFile, ...)
_DECOMPRESS_COMMANDS = {"gzip": "gzip -dc", "bz2": "bzip2 -dc", "xz": "xz -dc", "zstd": "zstd -dc"}


def _check_head(head: bytes, unit: Unit) -> None:
    """Refuse a unit whose first bytes are another format, or text that is not UTF-8."""
    name = (unit.member or unit.path.name).rsplit("/", 1)[-1]
    wrong = misfit(head, FORMATS[unit.fmt], name)
    if wrong is not None:
        fix = wrong.advice
        if wrong.convert:
            fix = f"convert it first: {convert_command(unit, wrong.convert, 'lines', wrong.suffix)}"
        raise DataFormatError(f"{unit.label}: {wrong.seen}; {fix}")
    found = sniff_head(head)
    if found is not None:
        problem = damage(unit) if found[0] == UNKNOWN_ENCODING else None
        raise DataFormatError(damaged_error(unit, problem) if problem else encoding_error(unit, *found))


def damage(unit: Unit) -> str | None:
    """Why the unit's compressed bytes are damaged, or None; read to the end, where decompressors check CRCs.

    Garbage decompressed from a damaged file reads as text in no known encoding, often before the
    decompressor notices: so a compressed unit is checked before it is refused as such. A member of a
    compressed tar is checked with the whole archive (tarfile stops before the gzip/bz2 trailer)."""
    if unit.compression is None and unit.archive is None:
        return None
    archives = _OpenArchive()
    try:
        with contextlib.ExitStack() as stack:
            stream = _decompressed(_open_outer(unit, archives, stack), unit.compression)
            stack.callback(stream.close)
            while stream.read(1 << 20):
                pass
        whole = tar_compression(unit.path.name) if unit.archive == "tar" else None
        if whole is not None:
            with open(unit.path, "rb") as raw, contextlib.closing(_decompressed(raw, whole)) as stream:
                while stream.read(1 << 20):
                    pass
    except read_errors() as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the disk's error (permissions, ...), which the tools name as such
        return " ".join(str(exc).split())
    finally:
        archives.close()
    return None


def check_decoded(unit: Unit, tally: DecodeTally) -> None:
    """Refuse a unit read to its end whose lines with non-ASCII text are mostly not UTF-8 (another encoding,
    or garbage from a damaged compressed file), not a few bad lines; `tally`: its decoded lines'."""
    found = foreign_encoding(tally)
    if found is None:
        return
    problem = damage(unit) if found[0] == UNKNOWN_ENCODING else None  # garbage from a damaged file?
    if problem:
        raise DataFormatError(damaged_error(unit, problem))
    counts = f" ({tally.undecodable:,} of its {tally.non_ascii:,} lines with non-ASCII text are not UTF-8)"
    raise DataFormatError(encoding_error(unit, *found, counts=counts))


def damaged_error(unit: Unit, problem: str) -> str:
    return f"{unit.label}: cannot be read to the end ({problem}); the file is corrupt or cut short: check it"


def encoding_error(unit: Unit, seen: str, iconv_name: str | None, counts: str = "") -> str:
    """The line that refuses a unit that is not UTF-8: what it is, and the command that converts it."""
    if iconv_name is None and seen != UNKNOWN_ENCODING:  # NULs in no pattern: no conversion makes text of it
        return f"{unit.label}: {seen}; leave it out of --input"
    where = f"{unit.label}: {seen}, not UTF-8{counts}; "
    if iconv_name is None:
        command = convert_command(unit, "iconv -f ENCODING -t UTF-8", "utf8")
        return f"{where}find its encoding (`file -i`, `uchardet`) and convert it first: {command}"
    return f"{where}convert it first: {convert_command(unit, f'iconv -f {iconv_name} -t UTF-8', 'utf8')}"


def convert_command(unit: Unit, command: str, tag: str, suffix: str = "") -> str:
    """The shell command that writes the unit's bytes through `command` to a file beside its own.

    The new file is named NAME.TAG.EXT (EXT: `suffix` or the unit's own ending): corpus.utf8.txt."""
    name = unit.member if unit.member is not None else unit.path.name
    stem = name.rsplit("/", 1)[-1]
    for compression in (".gz", ".bz2", ".xz", ".zst"):
        stem = stem.removesuffix(compression)
    base, dot, ext = stem.rpartition(".")
    if not dot:
        base, ext = stem, ""
    ending = suffix or (f".{ext}" if ext else "")
    target = shlex.quote(str(unit.path.parent / f"{base}.{tag}{ending}"))
    path = shlex.quote(str(unit.path))
    if unit.archive == "zip":
        source = f"unzip -p {path} {shlex.quote(name)}"
    elif unit.archive == "tar":
        source = f"tar -xOf {path} {shlex.quote(name)}"
    elif unit.compression is None:
        return f"{command} {path} > {target}"
    else:
        source = f"{_DECOMPRESS_COMMANDS[unit.compression]} {path}"
    if unit.compression is not None and unit.archive is not None:
        source += f" | {_DECOMPRESS_COMMANDS[unit.compression]}"
    return f"{source} | {command} > {target}"


def _check_unchanged(unit: Unit) -> None:
    """Refuse a unit whose file changed since it was listed: what was read may be part of it, or of two versions."""
    if unit.stamp is None:
        return
    try:
        now: FileStamp | None = file_stamp(unit.path)
    except FileNotFoundError:
        now = None
    if now != unit.stamp:
        raise DataFormatError(
            f"{unit.path}: changed while it was read ({_what_changed(unit.stamp, now)}), so what was read may be "
            "part of it or of two versions; run again once nothing writes to it"
        )


def _what_changed(before: FileStamp, now: FileStamp | None) -> str:
    if now is None:
        return "deleted"
    if now[2] != before[2]:
        return "replaced by another file"
    if now[0] != before[0]:
        return f"{before[0]:,} bytes when listed, {now[0]:,} after"
    return "modified, same size"


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
    _check_head(stream.peek(SNIFF_BYTES) if hasattr(stream, "peek") else b"", unit)
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
            else:
                yield from _streamed_chunks(index, unit, archives, config)
            _check_unchanged(unit)
    finally:
        archives.close()


def _streamed_chunks(index: int, unit: Unit, archives: _OpenArchive, config: PreprocessConfig) -> Iterator[Chunk]:
    with contextlib.ExitStack() as stack:
        try:
            outer = _open_outer(unit, archives, stack)
            stream = _decompressed(outer, unit.compression)
            stack.callback(stream.close)  # a decompressor leaves the file under it open: the stack closes both
            yield from _line_chunks(index, unit, stream, outer, config)
        except read_errors() as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # the disk's error (permissions, ...), which the tools name as such
            raise DataFormatError(damaged_error(unit, " ".join(str(exc).split()))) from None
