"""Train a BERT-style WordPiece vocab.txt on a corpus (same normalisation as BertChineseTokenizer).

Layout ("bert", the default) follows Google's BERT-Chinese vocab so that models and tools that
hard-code its ids keep working: [PAD]=0, [unused1]..[unused99]=1..99, [UNK]=100, [CLS]=101,
[SEP]=102, [MASK]=103, then the learned tokens (frequent characters and word pieces, continuation
pieces prefixed "##"). The "compact" layout puts [PAD] [UNK] [CLS] [SEP] [MASK] at 0..4 and has no
[unused] slots, for small vocabs. The file loads as-is with transformers.BertTokenizer(vocab_file).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer, pre_tokenizers, trainers
from tokenizers.models import WordPiece

from megatron_zh.data.corpus.charsets import DecodeTally
from megatron_zh.data.corpus.formats import FORMATS
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.readers import check_decoded, read_units
from megatron_zh.data.preprocess.sources import Unit, list_inputs, log_skipped
from megatron_zh.errors import ConfigError
from megatron_zh.fileio import atomic_write, refuse_existing_output
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


def _documents(units: list[Unit], reading: PreprocessConfig, counts: dict[str, int]) -> Iterator[str]:
    """The documents of every unit, read as preprocessing reads them: the first bytes checked (another format,
    an encoding that is not UTF-8), compressed streams read to the end, a unit mostly not UTF-8 refused with
    its encoding (readers.py); bad records (invalid UTF-8, a JSON line without the key) counted and skipped."""
    key = reading.json_keys[0]
    tally, current = DecodeTally(), 0
    for chunk in read_units(units, reading):
        if chunk.unit != current:  # the previous unit is read to its end
            check_decoded(units[current], tally)
            tally, current = DecodeTally(), chunk.unit
        texts, _, bad, decoded = FORMATS[chunk.fmt].documents(chunk, reading.json_keys, False)
        tally.add(decoded)
        counts["bad"] += len(bad)
        for text in texts[key]:
            if text.strip():
                counts["documents"] += 1
                yield text
    if units:
        check_decoded(units[current], tally)


def train_vocab(config: VocabConfig) -> list[str]:
    """Train, write `config.output` atomically, and return the tokens in id order."""
    inputs = list_inputs(config.inputs, "auto")
    log_skipped(inputs.skipped, shown=100)
    paths = list(dict.fromkeys(unit.path for unit in inputs.units))  # an archive once, for all its members
    refuse_overlap(config.output, [("--input", path) for path in paths])
    # Preprocessing's reading options (its output prefix and vocab are not used: nothing is tokenized here).
    reading = PreprocessConfig(
        inputs=tuple(config.inputs),
        output_prefix=config.output,
        vocab_file=config.output,
        json_keys=(config.json_key,),
        progress=False,
    )
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
    tokenizer.train_from_iterator(_documents(inputs.units, reading, counts), trainer=trainer)
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
