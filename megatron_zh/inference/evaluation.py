"""Loss and perplexity of a model on a corpus, with documents framed and packed as in training.

The input is a Megatron dataset prefix (PREFIX.bin/.idx) or a text file of documents, one per
line (JSON lines by extension, as preprocessing reads them). A text file goes through
`megatron_zh.data.preprocess` itself into a temporary dataset, so it is tokenized and framed
`[CLS] text [SEP]` by the very code that made the training data, and a text file and its
preprocessed prefix give the same figure.

The documents are read in file order (no shuffling) as one token stream of N tokens and cut into
windows of seq_length + 1 tokens overlapping by one, exactly as GPTDataset cuts its samples: window
k predicts tokens k*S+1 .. k*S+S from the S before each. Every token of the stream after the first
is predicted once. The tail that does not fill a window (r < S tokens) is predicted by one more
window, the last S + 1 tokens of the stream, scoring only its last r positions: the tail gets a
full context and nothing is counted twice. (A stream shorter than one window is one short window.)

The loss is training's validation loss (`megatron_zh.training.validation_loss.validation_loss`): the mean
token cross-entropy weighted by the loss mask, in float64 across batches.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from megatron_zh.data.datasets.builder import open_indexed_dataset
from megatron_zh.data.indexed.dataset import IndexedDataset, data_file_path, dataset_exists, read_metadata
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.pipeline import preprocess
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.knobs import knob
from megatron_zh.log import get_logger
from megatron_zh.model import GPT2Model
from megatron_zh.progress import Progress
from megatron_zh.text.tokenizer import BertChineseTokenizer
from megatron_zh.training.validation_loss import validation_loss
from megatron_zh.validators import POSITIVE_INT, POSITIVE_NUMBER, int_at_least, optional, validate_fields

logger = get_logger(__name__)


DATA = "data"  # the flags' help group


@dataclass(frozen=True)
class EvaluationConfig:
    """How a corpus is cut and scored (tools/evaluate.py's data flags)."""

    seq_length: int = knob(
        help="window length, as in training (e.g. 128 or 1024)", check=POSITIVE_INT, group=DATA, required=True
    )
    batch_size: int = knob(
        8,
        help="windows per forward pass (the loss is taken chunk by chunk: no batch x seq x vocab logits)",
        check=POSITIVE_INT,
        group=DATA,
    )
    # Two tokens make one prediction.
    max_tokens: int | None = knob(
        None,
        help="evaluate only the first N tokens of the input (framing included)",
        check=optional(int_at_least(2)),
        group=DATA,
    )
    eod_mask_loss: bool = knob(
        False, help="do not score predictions made from [SEP] (as training with --eod-mask-loss)", group=DATA
    )
    json_key: str = knob("text", help="the text key of a JSON-lines input", group=DATA)
    strict: bool = knob(
        False, help="stop at the first bad line of a text input (default: report and skip it)", group=DATA
    )
    progress: bool = knob(True, help="progress on stderr", group=DATA)
    log_interval_s: float = knob(
        10.0, help="seconds between progress lines when stderr is not a terminal", check=POSITIVE_NUMBER, flag=False
    )

    def __post_init__(self) -> None:
        validate_fields(self, "evaluation config")


@dataclass(frozen=True)
class EvaluationResult:
    loss: float  # mean cross-entropy per predicted token, nats
    perplexity: float
    tokens: int  # predicted tokens counted in the loss
    windows: int
    documents: int  # documents with at least one token in the evaluated stream
    stream_tokens: int  # tokens of the evaluated stream (framing included)
    seq_length: int
    input: str
    input_format: str  # "indexed" (a .bin/.idx prefix) or "text"
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_second": round(self.tokens_per_second, 1)}


def evaluate_input(
    model: GPT2Model,
    tokenizer: BertChineseTokenizer,
    path: str,
    config: EvaluationConfig,
    device: torch.device | str = "cpu",
) -> EvaluationResult:
    """Evaluate on a dataset prefix (PREFIX, PREFIX.bin or PREFIX.idx) or a text/JSON-lines file."""
    path = os.fspath(path)
    input_format, prefix = locate_input(path)
    if input_format == "indexed":
        dataset = open_indexed_dataset(prefix, tokenizer.fingerprint, tokenizer.normalization.identity)
        return evaluate_dataset(
            model, dataset, config, device, eod_id=_eod_id(prefix, tokenizer), input_name=path, input_format="indexed"
        )
    with tempfile.TemporaryDirectory(prefix="megatron_zh_eval_") as tmp:
        logger.info("tokenizing %s as preprocessing does ([CLS] text [SEP] per line)", path)
        stats = preprocess(
            PreprocessConfig(
                inputs=(path,),
                output_prefix=os.path.join(tmp, "eval"),
                vocab_file=str(tokenizer.vocab_file),
                json_keys=(config.json_key,),
                lower_case=tokenizer.lower_case,
                normalize=tokenizer.normalization.identity,
                strict=config.strict,
                progress=config.progress,
            )
        )
        dataset = IndexedDataset(stats.outputs[config.json_key])
        return evaluate_dataset(
            model, dataset, config, device, eod_id=tokenizer.eod, input_name=path, input_format="text"
        )


def locate_input(path: str) -> tuple[str, str]:
    """("indexed", PREFIX) for PREFIX, PREFIX.bin or PREFIX.idx of a dataset, ("text", path) for a file."""
    prefix = re.sub(r"\.(bin|idx)$", "", path)
    if dataset_exists(prefix) or prefix != path:
        return "indexed", prefix
    if not os.path.isfile(path):
        raise DataFormatError(
            f"--input {path}: no such text file, and no dataset {path}.bin/.idx "
            "(give a corpus file with one document per line, or a preprocessed dataset prefix)"
        )
    return "text", path


def _eod_id(prefix: str, tokenizer: BertChineseTokenizer) -> int:
    meta: dict[str, Any] = read_metadata(prefix) or {}
    return int(meta.get("eod", tokenizer.eod))


def evaluate_dataset(
    model: GPT2Model,
    dataset: IndexedDataset,
    config: EvaluationConfig,
    device: torch.device | str = "cpu",
    *,
    eod_id: int,
    input_name: str | None = None,
    input_format: str = "indexed",
) -> EvaluationResult:
    """Loss over the dataset's documents in order, packed into seq_length + 1 windows (module docstring)."""
    if config.seq_length > model.config.max_position_embeddings:
        raise ConfigError(
            f"seq_length {config.seq_length} exceeds the model's {model.config.max_position_embeddings} "
            "positions; evaluate with --seq-length at most that"
        )
    input_name = input_name or dataset.path_prefix
    num_tokens = dataset.num_tokens if config.max_tokens is None else min(dataset.num_tokens, config.max_tokens)
    if num_tokens < 2:
        raise DataFormatError(
            f"{input_name}: {num_tokens} token(s) to evaluate; at least 2 are needed "
            "(is the input empty, or all blank lines?)"
        )
    # Sequences are stored back to back (IndexedDataset checks it): the .bin in order is the stream.
    stream = np.memmap(data_file_path(dataset.path_prefix), dtype=dataset.dtype, mode="r")[:num_tokens]
    full, tail = divmod(num_tokens - 1, config.seq_length)
    num_batches = -(-full // config.batch_size) + (1 if tail else 0)
    progress = Progress(num_tokens - 1, desc="evaluate", unit="tok", enabled=config.progress, unit_scale=True)
    batches = _window_batches(stream, config, model.config.vocab_size, eod_id, input_name, progress)
    was_training = model.training
    start = time.perf_counter()
    try:
        result = validation_loss(model, batches, num_batches, torch.device(device))
        progress.update(progress.total - progress.done)  # the last batch, whose generator step never resumes
    finally:
        model.train(was_training)
        progress.close()
    seconds = time.perf_counter() - start
    if result.tokens == 0:
        raise DataFormatError(f"{input_name}: no token was scored (every input token is [SEP] under eod_mask_loss)")
    doc_starts = dataset.sequence_pointers[dataset.document_indices[:-1]] // dataset.dtype.itemsize
    documents = int(np.searchsorted(doc_starts, num_tokens, side="left"))
    logger.info(
        "%s predicted tokens in %.1f s (%.0f tokens/s): loss %.4f, perplexity %.2f",
        f"{result.tokens:,}",
        seconds,
        result.tokens / max(seconds, 1e-9),
        result.loss,
        result.perplexity,
    )
    return EvaluationResult(
        loss=float(result.loss),
        perplexity=math.exp(result.loss) if result.loss < 700 else math.inf,
        tokens=int(result.tokens),
        windows=full + (1 if tail else 0),
        documents=documents,
        stream_tokens=num_tokens,
        seq_length=config.seq_length,
        input=input_name,
        input_format=input_format,
        seconds=round(seconds, 3),
    )


def _window_batches(
    stream: np.ndarray, config: EvaluationConfig, vocab_size: int, eod_id: int, input_name: str, progress: Progress
) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches {input_ids, labels, loss_mask} of the full windows, then the tail window."""
    seq, num_tokens = config.seq_length, len(stream)
    full, tail = divmod(num_tokens - 1, seq)
    for first in range(0, full, config.batch_size):
        count = min(config.batch_size, full - first)
        block = _read(stream, first * seq, (first + count) * seq + 1, vocab_size, input_name)
        windows = np.lib.stride_tricks.sliding_window_view(block, seq + 1)[::seq]
        yield _batch(windows, seq, config, eod_id)
        _advance(progress, count * seq, config.log_interval_s)
    if tail:
        start = max(0, num_tokens - 1 - seq)
        yield _batch(_read(stream, start, num_tokens, vocab_size, input_name)[None], tail, config, eod_id)
        _advance(progress, tail, config.log_interval_s)


def _read(stream: np.ndarray, begin: int, end: int, vocab_size: int, input_name: str) -> np.ndarray:
    tokens = np.asarray(stream[begin:end], dtype=np.int64)
    bad = (tokens < 0) | (tokens >= vocab_size)
    if bad.any():
        where = begin + int(np.argmax(bad))
        raise DataFormatError(
            f"{input_name}: token {where} of the stream has id {int(stream[where])}, outside the "
            f"model's vocabulary of {vocab_size}; the data was made with another vocab"
        )
    return tokens


def _batch(windows: np.ndarray, scored: int, config: EvaluationConfig, eod_id: int) -> dict[str, torch.Tensor]:
    """Windows [rows, t + 1] -> inputs, next-token labels, and a mask scoring the last `scored` positions."""
    rows = torch.from_numpy(np.array(windows, dtype=np.int64))  # a copy: the window views overlap
    input_ids, labels = rows[:, :-1], rows[:, 1:]
    loss_mask = torch.zeros(input_ids.shape, dtype=torch.float32)
    loss_mask[:, -scored:] = 1.0
    if config.eod_mask_loss:
        loss_mask[input_ids == eod_id] = 0.0
    return {"input_ids": input_ids, "labels": labels, "loss_mask": loss_mask}


def _advance(progress: Progress, tokens: int, interval_s: float) -> None:
    """Count `tokens` more predicted; without a bar, log tokens per second and ETA every `interval_s`."""
    progress.update(tokens)
    if progress.done < progress.total and progress.due(interval_s):
        rate = progress.rate
        logger.info(
            "evaluated %s/%s tokens (%.0f tokens/s), ETA %.0f s",
            f"{progress.done:,}",
            f"{progress.total:,}",
            rate,
            (progress.total - progress.done) / max(rate, 1e-9),
        )
