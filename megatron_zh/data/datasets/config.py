"""What the datasets are asked to read and how to cut it: one config, declared once.

`DatasetConfig` is the data half of a ds_configs file's "pretrain" block (nested in TrainConfig,
with the same flat keys and flags: `--data-path`, `--seq-length`, `--split`, ...). A new sampling
knob is one field here and the code that reads it. `VocabIds` is not configuration but what the
vocab tells the datasets: its fingerprint, which every dataset's metadata must carry, and the
end-of-document and padding ids (None: each dataset's own metadata says), and the text normalisation
the datasets must share (text/normalization.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, get_args

from megatron_zh.data.datasets.splits import split_ranges
from megatron_zh.errors import ConfigError
from megatron_zh.knobs import knob
from megatron_zh.validators import (
    BOOLEAN,
    NON_NEGATIVE_INT,
    SEED,
    Check,
    int_at_least,
    one_of,
    optional,
    validate_fields,
)

SampleMode = Literal["packed", "document"]
SAMPLE_MODES: tuple[SampleMode, ...] = get_args(SampleMode)
DATA, SCHEDULE = "data (pretrain block)", "training schedule"  # the flags' help groups

PREFIX_LIST = Check(
    lambda v: isinstance(v, tuple) and bool(v) and all(isinstance(p, str) and p for p in v),
    "a non-empty list of dataset prefixes, optionally weighted: 0.7 a 0.3 b",
)
SOURCE_LIST = Check(
    lambda v: v is None or (isinstance(v, tuple) and bool(v) and all(isinstance(p, str) and p for p in v)),
    "a list of dataset prefixes, each optionally named: news=data/news_text_document",
)


@dataclass(frozen=True)
class DatasetConfig:
    """Which corpora, and how they become samples. Validated on construction (ConfigError)."""

    data_path: tuple[str, ...] = knob(
        help="dataset prefix(es), optionally weighted: 0.7 a 0.3 b", check=PREFIX_LIST, group=DATA
    )
    valid_data_path: tuple[str, ...] | None = knob(
        None,
        help="validation sources besides the split's: dataset prefixes, each all validation data and each "
        "logged under its own name (NAME=PREFIX, or PREFIX named by its file name without _text_document)",
        check=SOURCE_LIST,
        group=DATA,
    )
    seq_length: int = knob(
        1024, help="tokens per sample (each sample reads one more, for the labels)", check=int_at_least(2), group=DATA
    )
    split: str = knob("949,50,1", help='train,valid,test weights, e.g. "949,50,1"', group=DATA)
    seed: int = knob(1234, help="seed of weights, data order and dropout", check=SEED, group=SCHEDULE)
    data_cache_path: str | None = knob(
        None, help="directory for dataset index files (default: index-cache/ beside each dataset)", group=DATA
    )
    eod_mask_loss: bool = knob(False, help="no loss on [SEP] inputs", check=BOOLEAN, group=DATA)
    sample_mode: SampleMode = knob(
        "packed",
        help="packed: Megatron's windows across documents; document: each document cut on its own "
        "into padded chunks, as UER-py does",
        check=one_of(SAMPLE_MODES),
        group=DATA,
    )

    def __post_init__(self) -> None:
        # A list (JSON, Python callers) becomes a tuple: the config is frozen and hashable.
        for name in ("data_path", "valid_data_path"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(str(p) if isinstance(p, os.PathLike) else p for p in value))
        validate_fields(self, "data config")
        split_ranges(self.split)  # raises ConfigError when malformed
        validation_sources(self.valid_data_path or ())  # names: ConfigError when two clash

    @property
    def validation_sources(self) -> list[tuple[str, str]]:
        """(name, prefix) of each --valid-data-path source."""
        return validation_sources(self.valid_data_path or ())


def validation_sources(entries: tuple[str, ...]) -> list[tuple[str, str]]:
    """("news", "data/news_text_document") for "news=data/news_text_document" and for "data/news_text_document"."""
    sources: list[tuple[str, str]] = []
    for entry in entries:
        if "=" in entry:
            name, _, prefix = entry.partition("=")
        else:
            name, prefix = os.path.basename(entry).removesuffix("_text_document"), entry
        if not prefix or not name or any(c.isspace() or c == "/" for c in name):
            raise ConfigError(
                f"--valid-data-path {entry!r}: give a dataset prefix, optionally named NAME=PREFIX "
                "(a name without spaces or '/')"
            )
        if name in dict(sources):
            raise ConfigError(
                f"--valid-data-path names two sources {name!r} ({dict(sources)[name]} and {prefix}); "
                "name them apart: NAME=PREFIX"
            )
        sources.append((name, prefix))
    return sources


@dataclass(frozen=True)
class VocabIds:
    """What the vocab tells the datasets (module docstring); every field optional."""

    fingerprint: str | None = None  # if set, must equal each dataset's metadata fingerprint
    normalization: str | None = None  # if set, each dataset's text normalisation (metadata; absent: "none")
    eod: int | None = None  # the id eod_mask_loss masks (default: the metadata's "eod")
    pad: int | None = None  # the id that pads document chunks (default: the metadata's "pad")

    def __post_init__(self) -> None:
        for name in ("eod", "pad"):
            optional(NON_NEGATIVE_INT)(name, getattr(self, name))
