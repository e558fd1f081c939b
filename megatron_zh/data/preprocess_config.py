"""What a preprocessing run is asked to do: its config, its counts, and the input files it reads.

Torch-free, like everything the preprocessing workers import (`preprocess_encode`).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_zh.errors import ConfigError
from megatron_zh.knobs import flag_name, knob
from megatron_zh.validators import POSITIVE_INT, Check, one_of, validate_fields

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
INPUT_FORMATS = ("auto", "text", "jsonl")
TOKENIZER_TYPES = {"BertWordPieceLowerCase": True, "BertWordPieceCase": False}  # Megatron's names -> lower_case

_SOME = Check(lambda v: bool(v), "one or more files or glob patterns")
_DISTINCT_KEYS = Check(lambda v: bool(v) and len(set(v)) == len(v), "one or more distinct keys")
# Fields without a command-line flag of their own are named as fields in errors, the rest as flags.
_NOT_FLAGS = frozenset({"chunk_bytes", "max_reported_bad_lines", "progress"})


@dataclass(frozen=True)
class PreprocessConfig:
    inputs: Sequence[str] = knob(help="files or glob patterns", check=_SOME)
    output_prefix: str = knob(help="writes {output_prefix}_{key}_document.bin/.idx/.meta.json per JSON key")
    vocab_file: str = knob(help="the BERT WordPiece vocab.txt")
    json_keys: Sequence[str] = knob(("text",), help="JSON keys to tokenize, one dataset each", check=_DISTINCT_KEYS)
    input_format: str = knob(
        "auto",
        help="auto (by extension: .json/.jsonl/.ndjson are JSON lines), text or jsonl",
        check=one_of(INPUT_FORMATS),
    )
    workers: int = knob(1, help="tokenizer processes", check=POSITIVE_INT)
    prepend_cls: bool = knob(True, help="[CLS] starts each document")
    append_eod: bool = knob(True, help="[SEP] ends each document")
    lower_case: bool = knob(True, help="lower-case and strip accents (BertWordPieceLowerCase)")
    strict: bool = knob(False, help="stop at the first bad line instead of skipping it")
    chunk_bytes: int = knob(1 << 20, help="input read per task, in bytes (whole lines)", check=POSITIVE_INT)
    log_interval: int = knob(
        100_000, help="documents between progress lines when stderr is not a terminal", check=POSITIVE_INT
    )
    max_reported_bad_lines: int = knob(100, help="bad lines reported one by one; the rest are counted")
    progress: bool = knob(True, help="a progress bar on a terminal, progress lines otherwise")

    def __post_init__(self) -> None:
        validate_fields(self, "preprocessing config", label=_label)


def _label(name: str) -> str:
    if name in _NOT_FLAGS:
        return name
    return "--input" if name == "inputs" else flag_name(name)


@dataclass
class PreprocessStats:
    outputs: dict[str, str]  # json key -> dataset prefix
    documents: dict[str, int]
    tokens: dict[str, int]
    dropped_empty: dict[str, int]
    bad_lines: int = 0
    input_bytes: int = 0
    seconds: float = 0.0


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron's naming: one dataset per JSON key, PREFIX_{key}_document."""
    return f"{output_prefix}_{key}_document"


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files named or matched (each glob sorted, so runs are reproducible); errors for anything missing."""
    files: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise ConfigError(f"--input {pattern!r} matches no files")
            files.extend(Path(p) for p in matches)
        elif os.path.isfile(pattern):
            files.append(Path(pattern))
        else:
            raise ConfigError(f"--input {pattern}: no such file")
    return files


def is_json_lines(path: Path, input_format: str) -> bool:
    """Whether `path` is read as JSON lines (else plain text, one document per line)."""
    return input_format == "jsonl" or (input_format == "auto" and path.suffix.lower() in JSON_SUFFIXES)
