"""Corpus formats in one table: how each is recognised, read into chunks, and split into documents.

A format is recognised by its name's ending (under any compression suffix) or forced with
`--input-format`; then the first bytes of a streamed input are checked against what the format
looks like (`misfit`): gzip data in a file named .txt, a JSON array in a file named .json, a
Megatron index, ... stop the run naming what the bytes really are.

A *streamed* format is lines of bytes: it may be compressed or sit inside a
.zip/.tar, and readers.py cuts it into chunks of whole lines however it is packed. Any other
format is a file read by its own `read_file` (Parquet needs random access). In the workers,
`documents` turns one chunk into the texts of each key.

Adding a format is one `CorpusFormat` entry here, its functions, and a test.

Torch-free: the driver and the workers import it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_zh.data.corpus.charsets import DecodeTally
from megatron_zh.errors import DataFormatError
from megatron_zh.fileio import DuplicateKeyError, json_type_name, loads_json

FormatName = Literal["text", "jsonl", "parquet"]
InputFormat = Literal["auto", "text", "jsonl"]  # --input-format: "auto", or a streamed format forced on every input
BadRecord = tuple[int, int, str]  # (unit index, line or row number, reason)
# Texts per key, blank records, bad records, and how many lines were UTF-8 (charsets.py; empty for Parquet).
Documents = tuple[dict[str, list[str]], int, list[BadRecord], DecodeTally]


@dataclass
class Chunk:
    """One task for a worker: whole lines of one unit (a file or archive member), or rows of a file."""

    unit: int  # index of the unit in the run's list (sources.Unit)
    fmt: FormatName
    first_line: int  # 1-based number of the chunk's first line (row) in its unit
    lines: list[bytes] = field(default_factory=list)  # streamed formats: lines, line breaks included
    columns: dict[str, list[Any]] | None = None  # other formats: per key, the values of the rows
    input_bytes: int = 0  # decompressed bytes
    disk_bytes: int = 0  # the share of the bytes on disk (progress)


@dataclass(frozen=True)
class CorpusFormat:
    name: FormatName
    label: str  # how messages name it
    suffixes: tuple[str, ...]  # recognised by these name endings (lower case); none: the default
    record: str  # what one record is called in messages: "line" or "row"
    named_fields: bool  # records hold named fields (--json-keys); plain text has one unnamed text
    # documents(chunk, keys, blank_line_boundaries) -> texts per key, blank records, bad records
    documents: Callable[[Chunk, tuple[str, ...], bool], Documents]
    # Not streamed: read_file(unit index, path, bytes on disk, keys, chunk bytes) -> chunks
    read_file: Callable[[int, Path, int, tuple[str, ...], int], Iterator[Chunk]] | None = None
    # Streamed: sniff(first bytes) -> why they cannot be this format, or None
    sniff: Callable[[bytes], Misfit | None] | None = None

    @property
    def streamed(self) -> bool:
        return self.read_file is None


# ----------------------------------------------------------------------------------- plain text


def _text_documents(chunk: Chunk, keys: tuple[str, ...], blank_line: bool) -> Documents:
    """Lines, or runs of non-blank lines with blank-line boundaries; invalid UTF-8 lines are bad records."""
    bad: list[BadRecord] = []
    tally = DecodeTally()
    lines = _decode_lines(chunk.lines)  # the common case: valid UTF-8, decoded in one call
    if lines is None:  # some line is not UTF-8: go line by line, reporting and skipping those
        lines = []
        for line_no, raw in enumerate(chunk.lines, start=chunk.first_line):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
                tally.count(raw, True)
            except UnicodeDecodeError as exc:
                bad.append((chunk.unit, line_no, _utf8_problem(raw, exc)))
                tally.count(raw, False)
    else:  # all UTF-8: only the counts, for a file whose other chunks are not
        tally.lines = len(chunk.lines)
        tally.non_ascii = len(chunk.lines) - sum(map(bytes.isascii, chunk.lines))  # 0.03 ms per 2,500 lines
    if blank_line:
        lines = _join_paragraphs(lines)
    # Blank lines stay in: they give no tokens and are counted as empty documents by the caller.
    return {keys[0]: lines}, 0, bad, tally


def _decode_lines(lines: list[bytes]) -> list[str] | None:
    """Plain-text lines without their line breaks, or None if any line is not UTF-8 (then go line by line)."""
    try:
        text = b"".join(lines).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.endswith("\n"):
        text = text[:-1]
    # Only \n ends a line (not str.splitlines' \u2028, \x0b, ...); a CR before it goes too.
    return text.replace("\r\n", "\n").split("\n")


def _join_paragraphs(lines: list[str]) -> list[str]:
    """Blank-line boundaries: each run of non-blank lines is one document, its lines joined with newlines."""
    documents: list[str] = []
    paragraph: list[str] = []
    for line in lines:
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            documents.append("\n".join(paragraph))
            paragraph = []
    if paragraph:
        documents.append("\n".join(paragraph))
    return documents


_INVALID_UTF8 = "invalid UTF-8"


def _utf8_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"{_INVALID_UTF8} at byte {exc.start} ({raw[exc.start : exc.start + 4]!r})"


# ----------------------------------------------------------------------------------- JSON lines


def _json_documents(chunk: Chunk, keys: tuple[str, ...], blank_line: bool) -> Documents:
    texts: dict[str, list[str]] = {key: [] for key in keys}
    bad: list[BadRecord] = []
    blank = 0
    tally = DecodeTally()
    for line_no, raw in enumerate(chunk.lines, start=chunk.first_line):
        record, reason = _parse_json_line(raw, keys)
        tally.count(raw, reason is None or not reason.startswith(_INVALID_UTF8))
        if reason is not None:
            bad.append((chunk.unit, line_no, reason))
        elif record is None:
            blank += 1
        else:
            for key in texts:
                texts[key].append(record[key])
    return texts, blank, bad, tally


def _parse_json_line(raw: bytes, keys: tuple[str, ...]) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON line: (record, None), (None, None) for a blank line, or (None, why the line is bad)."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return None, _utf8_problem(raw, exc)
    if not line.strip():
        return None, None
    try:
        record = loads_json(line)
    except DuplicateKeyError as exc:  # which of the two texts is the document? Neither: the line is bad
        return None, exc.msg
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    for key in keys:
        if key not in record:
            return None, f"missing key {key!r}"
        if not isinstance(record[key], str):
            return None, f"key {key!r} holds a {json_type_name(record[key])}, not a string"
        try:
            record[key].encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON escapes can spell lone surrogates ("\ud800")
            return None, f"key {key!r} holds a lone surrogate {exc.object[exc.start]!r}, not valid Unicode"
    return record, None


# -------------------------------------------------------------------------------------- Parquet


def _column_documents(chunk: Chunk, keys: tuple[str, ...], blank_line: bool) -> Documents:
    texts: dict[str, list[str]] = {key: [] for key in keys}
    bad: list[BadRecord] = []
    columns = chunk.columns or {}
    for row, values in enumerate(zip(*(columns[key] for key in keys)), start=chunk.first_line):
        missing = next((key for key, value in zip(keys, values) if value is None), None)
        if missing is not None:
            bad.append((chunk.unit, row, f"column {missing!r} is null"))
            continue
        for key, value in zip(keys, values):
            texts[key].append(value)
    return texts, 0, bad, DecodeTally()  # Arrow checks that strings are UTF-8 when it reads them


def _parquet_chunks(
    index: int, path: Path, disk_bytes: int, keys: tuple[str, ...], chunk_bytes: int
) -> Iterator[Chunk]:
    """One record batch of about `chunk_bytes` at a time (pyarrow reads a row group at a time), the key columns only."""
    import pyarrow as pa  # only when a Parquet input is read

    try:
        yield from _parquet_batches(index, path, disk_bytes, keys, chunk_bytes)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the disk's error (permissions, ...), which the tools name as such
        # Empty, truncated or corrupt: Arrow's words (ArrowInvalid, or an OSError without errno).
        words = " ".join(str(exc).split())  # Arrow's messages may end in a line break: keep the error one line
        raise DataFormatError(f"{path}: not a readable Parquet file ({words}); check the download") from None


def _parquet_batches(
    index: int, path: Path, disk_bytes: int, keys: tuple[str, ...], chunk_bytes: int
) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    for key in keys:
        if key not in schema.names:
            raise DataFormatError(
                f"{path}: no column {key!r} (columns: {', '.join(schema.names)}); name the text column(s) "
                "with --json-keys"
            )
        if not _holds_strings(schema.field(key).type):
            raise DataFormatError(
                f"{path}: column {key!r} holds {schema.field(key).type}, not strings; name a text column"
            )
    metadata = parquet.metadata
    rows = max(metadata.num_rows, 1)
    key_bytes = sum(
        metadata.row_group(g).column(c).total_uncompressed_size
        for g in range(metadata.num_row_groups)
        for c in range(metadata.num_columns)
        if metadata.row_group(g).column(c).path_in_schema in keys
    )
    batch_rows = max(1, int(chunk_bytes / max(key_bytes / rows, 1.0)))
    row, reported = 1, 0
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(keys)):
        columns = {key: batch.column(key).to_pylist() for key in keys}
        done = disk_bytes * (row - 1 + batch.num_rows) // rows
        yield Chunk(index, "parquet", row, columns=columns, input_bytes=batch.nbytes, disk_bytes=done - reported)
        row += batch.num_rows
        reported = done


def _holds_strings(kind: Any) -> bool:
    """string, large_string, string_view, or any of them dictionary-encoded (what pandas writes for `category`)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    is_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_view(kind))


# ------------------------------------------------------------------------------ what bytes are


@dataclass(frozen=True)
class Misfit:
    """Why a streamed input's first bytes cannot be the format its name says, and the way out."""

    seen: str  # what the bytes are: "gzip-compressed data"
    advice: str = ""  # what to do, when no command converts it
    convert: str = ""  # or: a filter that writes it as the format read (`jq -c '.[]'`); readers builds the command
    suffix: str = ""  # the converted file's ending (the input's own when empty)


# Other formats' first bytes: (offset, bytes, what they are, the name ending that reads them, if any).
SIGNATURES = (
    (0, b"\x1f\x8b", "gzip-compressed data", ".gz"),
    (0, b"\xfd7zXZ\x00", "xz-compressed data", ".xz"),
    (0, b"\x28\xb5\x2f\xfd", "zstd-compressed data", ".zst"),
    *((0, b"BZh%d1AY&SY" % level, "bzip2-compressed data", ".bz2") for level in range(1, 10)),  # block size 1-9
    (0, b"PK\x03\x04", "a zip archive", ".zip"),
    (257, b"ustar", "a tar archive", ".tar"),
    (0, b"PAR1\x15", "Parquet", ".parquet"),  # the magic, then the first page header's first field
    (0, b"MMIDIDX\x00\x00", "a Megatron dataset index (.idx)", ""),
)


def misfit(head: bytes, spec: CorpusFormat, name: str) -> Misfit | None:
    """Why the stream that begins with `head` (of a file or member called `name`) cannot be read as `spec`."""
    for offset, magic, seen, suffix in SIGNATURES:
        if head[offset : offset + len(magic)] != magic:
            continue
        at = f"its first bytes are {magic[:4].hex(' ')}" if offset == 0 else f"{magic.decode()!r} at byte {offset}"
        if suffix:
            return Misfit(
                f"{seen}, not {spec.label} ({at})",
                advice=f"rename it to {name}{suffix} and it is read as such",
            )
        return Misfit(f"{seen}, not a corpus ({at})", advice="leave it out of --input")
    return spec.sniff(head) if spec.sniff is not None else None


def _json_lines_misfit(head: bytes) -> Misfit | None:
    """A JSON array, or objects spread over several lines (pretty-printed): JSON, but not one object per line.

    Any array counts (a JSON-lines file of arrays has no record this tool reads); an object counts when its
    first line is a lone `{`, as every pretty-printer writes it (a single bad line stays a bad line)."""
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if start.startswith(b"["):
        return Misfit("a JSON array, not JSON lines (one object per line)", convert="jq -c '.[]'", suffix=".jsonl")
    if start.split(b"\n", 1)[0].strip() == b"{":
        return Misfit(
            "JSON objects spread over several lines (pretty-printed), not JSON lines (one object per line)",
            convert="jq -c .",
            suffix=".jsonl",
        )
    return None


# ---------------------------------------------------------------------------------------- table

FORMATS: dict[FormatName, CorpusFormat] = {
    "text": CorpusFormat("text", "plain text", (), "line", named_fields=False, documents=_text_documents),
    "jsonl": CorpusFormat(
        "jsonl", "JSON lines", (".json", ".jsonl", ".ndjson"), "line", True, _json_documents, sniff=_json_lines_misfit
    ),
    "parquet": CorpusFormat(
        "parquet", "Parquet", (".parquet",), "row", True, _column_documents, read_file=_parquet_chunks
    ),
}
DEFAULT_FORMAT: FormatName = "text"


def recognise(name: str, forced: InputFormat = "auto") -> CorpusFormat:
    """The format of a file or member called `name` (its compression suffix already removed).

    A name ending of a non-streamed format always decides; otherwise `forced` ("auto": the name
    ending, else plain text)."""
    lower = name.lower()
    by_name = next((spec for spec in FORMATS.values() if spec.suffixes and lower.endswith(spec.suffixes)), None)
    if by_name is not None and not by_name.streamed:
        return by_name
    if forced != "auto":
        return FORMATS[forced]
    return by_name or FORMATS[DEFAULT_FORMAT]
