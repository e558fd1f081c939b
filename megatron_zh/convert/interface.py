"""What every external model format gives: a reader into our model, a writer from our checkpoints.

A format (hf/, uer/) is a `ModelFormat`: its name (the tools' word for it), a `read` that turns
its files into an `ExternalModel` (our config and our parameter names, float32), and a `write`
that turns a checkpoint's weights into its files. Either may be absent where the direction does
not exist. The drivers in formats.py do what every conversion needs around them (overlap
guards, reading the checkpoint's fp32 masters, the vocab check, writing a checkpoint), so a new
format is its own module and one entry in formats.FORMATS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_zh.checkpoint.weights import LoadedCheckpoint
from megatron_zh.model.config import GPT2Config


@dataclass(frozen=True)
class ExternalModel:
    """A model read from another format, in our terms."""

    model_config: GPT2Config
    state_dict: dict[str, torch.Tensor]  # our parameter names, float32
    vocab_file: Path | None  # the vocab that came with it (None: the format carries none; pass one)
    lower_case: bool  # how its tokenizer normalises (BERT-Chinese: lower-cased)
    description: str  # what it was, for the checkpoint's `source` and logs: "Hugging Face folder /abs/dir"


# read(source, vocab_file, options) -> ExternalModel; options are the format's own (uer_config, ...).
Reader = Callable[[Path, "Path | None", dict[str, Any]], ExternalModel]
# write(checkpoint, output, vocab_file, overwrite, options) -> what was written (format-specific record).
Writer = Callable[[LoadedCheckpoint, Path, "Path | None", bool, dict[str, Any]], Any]


@dataclass(frozen=True)
class ModelFormat:
    name: str  # "hf", "uer": the tools' word for it (tools/convert_to_<name>.py, --<name> in generate/evaluate)
    title: str  # what a source of this format is, in messages: "a Hugging Face GPT-2 folder"
    source_name: str  # how refusals name the source a tool read: "the --hf folder"
    read: Reader | None = None
    write: Writer | None = None
    # True when `read` needs nothing but the path (and optionally a vocab): generate/evaluate then take it too.
    readable_alone: bool = False
