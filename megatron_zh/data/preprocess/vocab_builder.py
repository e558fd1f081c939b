"""Train a BERT-style WordPiece vocab.txt on a corpus (same normalisation as BertChineseTokenizer).

Layout ("bert", the default) follows Google's BERT-Chinese vocab so that models and tools that
hard-code its ids keep working: [PAD]=0, [unused1]..[unused99]=1..99, [UNK]=100, [CLS]=101,
[SEP]=102, [MASK]=103, then the learned tokens (frequent characters and word pieces, continuation
pieces prefixed "##"). The "compact" layout puts [PAD] [UNK] [CLS] [SEP] [MASK] at 0..4 and has no
[unused] slots, for small vocabs. The file loads as-is with transformers.BertTokenizer(vocab_file).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, pre_tokenizers, trainers
from tokenizers.models import WordPiece

from megatron_zh.data.corpus.formats import recognise
from megatron_zh.data.preprocess.sources import expand_inputs, log_skipped
from megatron_zh.errors import ConfigError
from megatron_zh.fileio import atomic_write, loads_json, refuse_existing_output
from megatron_zh.log import get_logger
from megatron_zh.paths import refuse_overlap
from megatron_zh.text.tokenizer import CLS, MASK, PAD, SEP, UNK, bert_normalizer

logger = get_logger(__name__)

BERT_UNUSED = 99  # [unused1] .. [unused99]


def reserved_tokens(layout: str) -> list[str]:
    if layout == "bert":
        return [PAD, *(f"[unused{i}]" for i in range(1, BERT_UNUSED + 1)), UNK, CLS, SEP, MASK]
    if layout == "compact":
        return [PAD, UNK, CLS, SEP, MASK]
    raise ConfigError(f"vocab layout {layout!r}: choose 'bert' or 'compact'")


@dataclass(frozen=True)
class VocabConfig:
    inputs: Sequence[str]  # text files (one document per line) or JSON lines, or globs
    output: str  # the vocab.txt to write
    vocab_size: int = 21128
    layout: str = "bert"
    lower_case: bool = True
    min_frequency: int = 2
    limit_alphabet: int | None = None  # keep at most this many initial characters (None: all)
    json_key: str = "text"
    overwrite: bool = False  # replace an existing `output` (a vocab is what datasets and checkpoints are tied to)

    def __post_init__(self) -> None:
        reserved = len(reserved_tokens(self.layout))
        if self.vocab_size <= reserved + 1:
            raise ConfigError(
                f"--vocab-size {self.vocab_size} leaves no room: the {self.layout!r} layout reserves {reserved} ids "
                "(use --layout compact for small vocabs)"
            )
        if self.min_frequency < 1:
            raise ConfigError("--min-frequency must be at least 1")


def _documents(paths: list[Path], json_key: str, counts: dict[str, int]) -> Iterator[str]:
    """Lines of every input; JSON lines yield their `json_key`; unreadable lines (a record with a key written twice
    too) are counted and skipped."""
    for path in paths:
        is_json = recognise(path.name).name == "jsonl"
        with open(path, "rb") as f:
            for raw in f:
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    text = loads_json(line)[json_key] if is_json and line.strip() else line
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    counts["bad"] += 1
                    continue
                if isinstance(text, str) and text.strip():
                    counts["documents"] += 1
                    yield text


def train_vocab(config: VocabConfig) -> list[str]:
    """Train, write `config.output` atomically, and return the tokens in id order."""
    paths, skipped = expand_inputs(config.inputs)
    log_skipped(skipped, shown=100)
    refuse_overlap(config.output, [("--input", path) for path in paths])
    refuse_existing_output(config.output, config.overwrite)
    reserved = reserved_tokens(config.layout)
    tokenizer = Tokenizer(WordPiece(unk_token=UNK))
    tokenizer.normalizer = bert_normalizer(config.lower_case)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    options: dict[str, Any] = {} if config.limit_alphabet is None else {"limit_alphabet": config.limit_alphabet}
    trainer = trainers.WordPieceTrainer(
        vocab_size=config.vocab_size - len(reserved),
        min_frequency=config.min_frequency,
        special_tokens=[],
        continuing_subword_prefix="##",
        show_progress=False,
        **options,
    )
    counts = {"documents": 0, "bad": 0}
    tokenizer.train_from_iterator(_documents(paths, config.json_key, counts), trainer=trainer)
    if counts["documents"] == 0:
        raise ConfigError(f"no text found in {[str(p) for p in paths]}")
    learned = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    taken = set(reserved)
    # A token must survive a round trip through vocab.txt: one line, nothing that reading trims.
    tokens = reserved + [t for t, _ in learned if t not in taken and t and not any(c.isspace() for c in t)]
    tokens = tokens[: config.vocab_size]
    with atomic_write(config.output, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(tokens) + "\n")
    logger.info(
        "wrote %s: %d tokens (%d reserved, %d learned) from %d documents%s",
        config.output,
        len(tokens),
        len(reserved),
        len(tokens) - len(reserved),
        counts["documents"],
        f", {counts['bad']} unreadable lines skipped" if counts["bad"] else "",
    )
    if len(tokens) < config.vocab_size:
        logger.warning("the corpus supports only %d tokens (asked for %d)", len(tokens), config.vocab_size)
    return tokens
