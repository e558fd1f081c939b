"""What every external model format gives: a reader into our model, a writer from our checkpoints.

A format (hf/, uer/) is a `ModelFormat`: its name (the tools' word for it), an `Importer` whose
`read` turns its files into an `ExternalModel` (our config and parameter names, float32), and an
`Exporter` whose `write` turns a checkpoint's weights into its files; either may be absent where the
direction does not exist. A format's own options are a dataclass of knobs, so its flags are derived
(tools/convert_checkpoint.py adds them). The drivers in formats.py do what every conversion needs
around read and write (overlap guards, the checkpoint's fp32 masters, the vocab check, writing a
checkpoint), so a new format is its own module and one entry in formats.FORMATS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_zh.checkpoint.weights import LoadedCheckpoint
from megatron_zh.model.config import GPT2Config
from megatron_zh.text.normalization import NONE


@dataclass(frozen=True)
class ExternalModel:
    """A model read from another format, in our terms."""

    model_config: GPT2Config
    state_dict: dict[str, torch.Tensor]  # our parameter names, float32
    vocab_file: Path | None  # the vocab that came with it (None: the format carries none; pass one)
    lower_case: bool  # how its tokenizer normalises (BERT-Chinese: lower-cased)
    description: str  # what it was, for the checkpoint's `source` and logs: "Hugging Face folder /abs/dir"
    normalization: str = NONE  # the text normalisation its training data had (text/normalization.py)


@dataclass(frozen=True)
class Importer:
    # read(source, vocab_file, options) -> ExternalModel; `options` are the knobs of `options` below, by key.
    read: Callable[[Path, Path | None, dict[str, Any]], ExternalModel]
    source_flag: str  # how tools name the source: "--hf", "--input"
    source_metavar: str  # "DIR", "MODEL.bin"
    options: type | None = None  # a dataclass of knobs: the format's own import flags (--uer-config, ...)
    notes: tuple[str, ...] = ()  # said after every import (what a user of the converted model should know)


@dataclass(frozen=True)
class Exporter:
    # write(checkpoint, output, overwrite, options) -> what was written (the format's own record).
    write: Callable[[LoadedCheckpoint, Path, bool, dict[str, Any]], Any]
    output_what: str  # "Hugging Face folder", "UER-py model file"
    output_metavar: str  # "DIR", "MODEL.bin"
    report: Callable[[Any], list[str]]  # the lines a tool prints about what `write` returned
    options: type | None = None  # a dataclass of knobs: the format's own export flags (--uer-config-output, ...)


@dataclass(frozen=True)
class ModelFormat:
    name: str  # "hf", "uer": the tools' word for it (--to hf, --from uer; --hf PATH in generate/evaluate)
    title: str  # what a source of this format is, in messages: "a Hugging Face GPT-2 folder"
    source_name: str  # how refusals name the source a tool read: "the --hf folder"
    importer: Importer | None = None
    exporter: Exporter | None = None
    # True when reading needs nothing but the path (and optionally a vocab): generate/evaluate then take it too.
    readable_alone: bool = False
