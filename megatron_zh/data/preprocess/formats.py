"""Corpus formats in one table: how each is recognised, read into chunks, and split into documents.

A format is recognised by its name's ending (under any compression suffix) or forced with
`--input-format`. A *streamed* format is lines of bytes: it may be compressed or sit inside a
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

from megatron_zh.errors import DataFormatError
from megatron_zh.fileio import DuplicateKeyError, json_type_name, loads_json

FormatName = Literal["text", "jsonl", "parquet"]
InputFormat = Literal["auto", "text", "jsonl"]  # --input-format: "auto", or a streamed format forced on every input
BadRecord = tuple[int, int, str]  # (unit index, line or row number, reason)
Documents = tuple[dict[str, list[str]], int, list[BadRecord]]  # texts per key, blank records, bad records


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

    @property
    def streamed(self) -> bool:
        return self.read_file is None


# ----------------------------------------------------------------------------------- plain text


def _text_documents(chunk: Chunk, keys: tuple[str, ...], blank_line: bool) -> Documents:
    """Lines, or runs of non-blank lines with blank-line boundaries; invalid UTF-8 lines are bad records."""
    bad: list[BadRecord] = []
    lines = _decode_lines(chunk.lines)  # the common case: valid UTF-8, decoded in one call
    if lines is None:  # some line is not UTF-8: go line by line, reporting and skipping those
        lines = []
        for line_no, raw in enumerate(chunk.lines, start=chunk.first_line):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as exc:
                bad.append((chunk.unit, line_no, _utf8_problem(raw, exc)))
    if blank_line:
        lines = _join_paragraphs(lines)
    # Blank lines stay in: they give no tokens and are counted as empty documents by the caller.
    return {keys[0]: lines}, 0, bad


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


def _utf8_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 at byte {exc.start} ({raw[exc.start : exc.start + 4]!r})"


# ----------------------------------------------------------------------------------- JSON lines


def _json_documents(chunk: Chunk, keys: tuple[str, ...], blank_line: bool) -> Documents:
    texts: dict[str, list[str]] = {key: [] for key in keys}
    bad: list[BadRecord] = []
    blank = 0
    for line_no, raw in enumerate(chunk.lines, start=chunk.first_line):
        record, reason = _parse_json_line(raw, keys)
        if reason is not None:
            bad.append((chunk.unit, line_no, reason))
        elif record is None:
            blank += 1
        else:
            for key in texts:
                texts[key].append(record[key])
    return texts, blank, bad


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
    return texts, 0, bad


def _parquet_chunks(
    index: int, path: Path, disk_bytes: int, keys: tuple[str, ...], chunk_bytes: int
) -> Iterator[Chunk]:
    """One record batch of about `chunk_bytes` at a time (pyarrow reads a row group at a time), the key columns only."""
    import pyarrow as pa  # only when a Parquet input is read
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    for key in keys:
        if key not in schema.names:
            raise DataFormatError(
                f"{path}: no column {key!r} (columns: {', '.join(schema.names)}); name the text column(s) "
                "with --json-keys"
            )
        kind = schema.field(key).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise DataFormatError(f"{path}: column {key!r} holds {kind}, not strings; name a text column")
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


# ---------------------------------------------------------------------------------------- table

FORMATS: dict[FormatName, CorpusFormat] = {
    "text": CorpusFormat("text", "plain text", (), "line", named_fields=False, documents=_text_documents),
    "jsonl": CorpusFormat("jsonl", "JSON lines", (".json", ".jsonl", ".ndjson"), "line", True, _json_documents),
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
