"""What a preprocessing run is asked to do (its config), and what it reports (its counts).

Torch-free, like everything the preprocessing workers import (`preprocess_encode`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from megatron_zh.data.corpus.formats import InputFormat
from megatron_zh.errors import ConfigError
from megatron_zh.knobs import flag_name, knob, knob_fields
from megatron_zh.text.normalization import NONE, NORMALIZE_SPEC, RULES
from megatron_zh.text.unknown_tokens import UnkReport
from megatron_zh.validators import NON_NEGATIVE_INT, POSITIVE_INT, Check, one_of, validate_fields

DOCUMENT_BOUNDARIES = ("line", "blank-line")
TOKENIZER_TYPES = {"BertWordPieceLowerCase": True, "BertWordPieceCase": False}  # Megatron's names -> lower_case
MAX_SHARDS = 100_000  # shard numbers are written with 5 digits, so a sorted glob lists them in index order

_SOME = Check(lambda v: bool(v), "one or more files, directories or glob patterns")
_DISTINCT_KEYS = Check(lambda v: bool(v) and len(set(v)) == len(v), "one or more distinct keys")
INPUT, TOKENIZER, OUTPUT, RUNTIME = "input", "tokenizer", "output", "runtime"


@dataclass(frozen=True)
class PreprocessConfig:
    inputs: tuple[str, ...] = knob(
        help="files, directories (walked recursively) or glob patterns (quote them), in any mix; "
        "plain, .gz/.bz2/.xz/.zst, or inside .zip/.tar/.tar.gz archives; .parquet files",
        check=_SOME,
        group=INPUT,
        option="--input",
        metavar="PATH",
        required=True,
    )
    output_prefix: str = knob(
        help="writes {output_prefix}_{key}_document.bin/.idx/.meta.json per JSON key",
        check=Check(lambda v: isinstance(v, str) and bool(v), "a path prefix such as data/corpus, not empty"),
        group=OUTPUT,
        required=True,
    )
    vocab_file: str = knob(
        help="BERT vocab.txt (the default BERT-Chinese one: python tools/fetch_assets.py)",
        group=TOKENIZER,
        required=True,
    )
    input_format: InputFormat = knob(
        "auto",
        help="auto: by extension, under any compression suffix (.json/.jsonl/.ndjson are JSON lines, .parquet "
        "Parquet, anything else plain text); text or jsonl: every file and member that is not Parquet",
        check=one_of(get_args(InputFormat)),
        group=INPUT,
    )
    json_keys: tuple[str, ...] = knob(
        ("text",),
        help="JSON keys (Parquet columns) to tokenize, one dataset each",
        check=_DISTINCT_KEYS,
        group=INPUT,
    )
    document_boundary: Literal["line", "blank-line"] = knob(
        "line",
        help="plain text: line (one document per line) or blank-line (a document is a run of non-blank lines, "
        "joined with newlines; CLUECorpusSmall's layout)",
        check=one_of(DOCUMENT_BOUNDARIES),
        group=INPUT,
    )
    min_doc_chars: int = knob(
        0, help="drop documents of fewer characters (counted and reported)", check=NON_NEGATIVE_INT, group=INPUT
    )
    dedup: bool = knob(
        False,
        help="drop exact duplicate documents (64-bit hash of the text; per shard when sharded; 8 bytes per "
        "document kept in memory)",
        group=INPUT,
    )
    num_shards: int = knob(
        1,
        help="split the inputs (files and archive members, in order) into this many contiguous shards, "
        "one run each; writes PREFIX_shardIIIII-of-KKKKK_{key}_document, merged in index order by "
        "tools/merge_datasets.py",
        check=Check(lambda v: POSITIVE_INT.accepts(v) and v <= MAX_SHARDS, f"an integer in [1, {MAX_SHARDS}]"),
        group=INPUT,
    )
    shard_index: int = knob(0, help="the shard this run tokenizes, 0-based", check=NON_NEGATIVE_INT, group=INPUT)
    lower_case: bool = knob(
        True, help="lower-case and strip accents (BertWordPieceLowerCase)", group=TOKENIZER, flag=False
    )
    normalize: str = knob(
        NONE,
        help=f"map characters the vocab lacks to equivalents it has before tokenizing (curly quotes, dashes, "
        f"ellipses, ...; a table derived from the vocab): {NONE} (ids exactly BertTokenizer's), or rule sets "
        f"{', '.join(RULES)}, comma-separated; recorded in .meta.json",
        check=NORMALIZE_SPEC,
        group=TOKENIZER,
        metavar="RULES",
    )
    prepend_cls: bool = knob(True, help="start every document with [CLS]", group=TOKENIZER)
    append_eod: bool = knob(True, help="end every document with [SEP], the end-of-document token", group=TOKENIZER)
    overwrite: bool = knob(
        False,
        help="replace output datasets that exist (each only once its new one is complete); without it they are refused",
        group=OUTPUT,
    )
    workers: int = knob(
        1,
        help="tokenizer processes (default: 1; in tools/preprocess_data.py, the CPUs this process may use)",
        check=POSITIVE_INT,
        group=RUNTIME,
    )
    strict: bool = knob(
        False, help="stop with an error at the first bad line instead of reporting and skipping it", group=RUNTIME
    )
    chunk_bytes: int = knob(
        1 << 20, help="input read per task, in bytes (whole lines)", check=POSITIVE_INT, group=RUNTIME, flag=False
    )
    log_interval: int = knob(
        100_000,
        help="documents between progress lines when stderr is not a terminal",
        check=POSITIVE_INT,
        group=RUNTIME,
    )
    max_reported_bad_lines: int = knob(
        100,
        help="bad lines (and skipped inputs) reported one by one; the rest are counted",
        check=NON_NEGATIVE_INT,
        group=RUNTIME,
    )
    progress: bool = knob(True, help="a progress bar on a terminal, progress lines otherwise", group=RUNTIME)

    def __post_init__(self) -> None:
        # Lists (or one string) from Python callers become tuples: the config is frozen and hashable.
        for name in ("inputs", "json_keys"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        validate_fields(self, "preprocessing config", label=_label)
        if self.shard_index >= self.num_shards:
            raise ConfigError(
                f"--shard-index {self.shard_index} is not below --num-shards {self.num_shards}; "
                f"shards are numbered 0 to {self.num_shards - 1}"
            )

    @property
    def run_prefix(self) -> str:
        """The output prefix of this run: `output_prefix`, or its shard's when sharded."""
        if self.num_shards == 1:
            return self.output_prefix
        return f"{self.output_prefix}_shard{self.shard_index:05d}-of-{self.num_shards:05d}"


def _label(name: str) -> str:
    """Fields with a flag are named as the flag in errors, the others as fields."""
    for spec_field, spec in knob_fields(PreprocessConfig):
        if spec_field.name == name:
            return spec.option or flag_name(name)
    return name


@dataclass
class PreprocessStats:
    outputs: dict[str, str]  # json key -> dataset prefix
    documents: dict[str, int]
    tokens: dict[str, int]
    dropped_empty: dict[str, int]
    dropped_short: dict[str, int] = field(default_factory=dict)  # under --min-doc-chars
    dropped_duplicate: dict[str, int] = field(default_factory=dict)  # --dedup
    unk: dict[str, UnkReport] = field(default_factory=dict)  # [UNK] tokens and the text behind them
    bad_lines: int = 0
    skipped_inputs: int = 0  # files and archive members left out (sources.Skipped)
    input_bytes: int = 0  # after decompression
    seconds: float = 0.0


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron's naming: one dataset per JSON key, PREFIX_{key}_document."""
    return f"{output_prefix}_{key}_document"
