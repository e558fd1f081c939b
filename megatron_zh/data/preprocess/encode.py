"""The work done on each chunk of input: decode, parse, split into documents, filter, tokenize, frame.

A chunk is whole lines of one file or archive member (text or JSON lines), or rows of a Parquet file
(readers.py cuts them in the main process); its format (formats.py) splits it into documents: lines,
runs of non-blank lines (`--document-boundary blank-line`), JSON records or rows. Those without tokens or shorter than
`min_doc_chars` are dropped and counted, and with `dedup` the rest are hashed for the main process.

It runs in the preprocessing worker processes (or in-process with one worker), so this module and
what it imports stay free of torch: a worker starts in milliseconds and holds no CUDA state.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import numpy as np

from megatron_zh.data.corpus.charsets import DecodeTally
from megatron_zh.data.corpus.formats import FORMATS, BadRecord, Chunk
from megatron_zh.data.indexed.dataset import best_token_dtype
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.dedup import document_hashes
from megatron_zh.data.preprocess.workers import die_with_parent
from megatron_zh.text.tokenizer import BertChineseTokenizer
from megatron_zh.text.unknown_tokens import UnkTally


@dataclass
class ChunkResult:
    tokens: dict[str, np.ndarray]  # per key: the framed documents, concatenated
    lengths: dict[str, np.ndarray]  # per key: tokens per kept document
    dropped_empty: dict[str, int]
    dropped_short: dict[str, int]  # fewer than min_doc_chars characters
    hashes: dict[str, np.ndarray]  # per key, with dedup: one uint64 per kept document
    unk: dict[str, UnkTally] = field(default_factory=dict)  # per key: the kept documents' [UNK]s
    unit: int = 0
    bad: list[BadRecord] = field(default_factory=list)
    input_bytes: int = 0
    disk_bytes: int = 0
    decoded: DecodeTally = field(default_factory=DecodeTally)  # lines that were UTF-8, and those that were not


class ChunkEncoder:
    """Chunk -> ChunkResult for one config; holds the tokenizer."""

    def __init__(self, config: PreprocessConfig, tokenizer: BertChineseTokenizer | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer or BertChineseTokenizer(
            config.vocab_file, lower_case=config.lower_case, normalization=config.normalize
        )
        self.dtype = best_token_dtype(self.tokenizer.vocab_size)
        self.blank_line = config.document_boundary == "blank-line"

    def __call__(self, chunk: Chunk) -> ChunkResult:
        texts, blank, bad, decoded = FORMATS[chunk.fmt].documents(chunk, self.config.json_keys, self.blank_line)
        result = ChunkResult(
            {},
            {},
            {},
            {},
            {},
            unit=chunk.unit,
            bad=bad,
            input_bytes=chunk.input_bytes,
            disk_bytes=chunk.disk_bytes,
            decoded=decoded,
        )
        for key in self.config.json_keys:
            # Blank lines and lines of nothing but whitespace or control characters give no tokens.
            tallies: list[UnkTally] = []
            ids, lengths = self.tokenizer.encode_batch_flat(texts[key], tallies)
            keep = lengths > 0
            result.dropped_empty[key] = blank + int((~keep).sum())
            result.dropped_short[key] = 0
            if self.config.min_doc_chars:  # characters of the text as read (str length), empty ones excluded
                chars = np.fromiter(map(len, texts[key]), np.int64, len(texts[key]))
                short = keep & (chars < self.config.min_doc_chars)
                ids = ids[~np.repeat(short, lengths)]
                keep &= ~short
                result.dropped_short[key] = int(short.sum())
            if self.config.dedup:  # hashed here, in parallel; the main process keeps the set of those seen
                result.hashes[key] = document_hashes([t for t, k in zip(texts[key], keep) if k])
            result.unk[key] = tallies[0].select(keep)
            result.tokens[key], result.lengths[key] = self._frame(ids, lengths[keep])
        return result

    def _frame(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Put [CLS] before and [SEP] after every document, in one pass over the flat arrays."""
        lead, tail = int(self.config.prepend_cls), int(self.config.append_eod)
        framed_lengths = lengths + (lead + tail)
        out = np.empty(int(framed_lengths.sum()), dtype=self.dtype)
        ends = np.cumsum(framed_lengths)
        starts = ends - framed_lengths
        body = np.ones(out.size, dtype=bool)
        if lead:
            out[starts] = self.tokenizer.cls
            body[starts] = False
        if tail:
            out[ends - 1] = self.tokenizer.eod
            body[ends - 1] = False
        out[body] = ids
        return out, framed_lengths.astype(np.int32)


# A worker process holds one encoder, made once by the pool initializer (the standard pattern).
_worker_encoder: ChunkEncoder | None = None


def init_worker(config: PreprocessConfig, parent_pid: int | None = None) -> None:
    global _worker_encoder
    if parent_pid is not None:
        die_with_parent(parent_pid)  # no orphans when the main process is killed (even by SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and stops the pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: no Rayon threads on top
    _worker_encoder = ChunkEncoder(config)


def encode_in_worker(chunk: Chunk) -> ChunkResult:
    assert _worker_encoder is not None
    return _worker_encoder(chunk)
