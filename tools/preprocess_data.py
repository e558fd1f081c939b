"""Tokenize a corpus into Megatron's .bin/.idx (BERT-Chinese WordPiece, documents framed [CLS] ... [SEP]).

  python tools/preprocess_data.py --input corpus.txt --output-prefix data/clue \\
      --vocab-file google_zh_vocab.txt --workers 2
  # -> data/clue_text_document.bin / .idx / .meta.json
  python tools/preprocess_data.py --input news2016zh_corpus.zip webText2019zh_corpus.zip \\
      wiki2019zh_corpus.zip comment2019zh_corpus.zip --document-boundary blank-line \\
      --output-prefix data/cluecorpussmall --vocab-file google_zh_vocab.txt

Inputs: files, directories (walked recursively) and globs, in any mix, read in order (each directory
and glob sorted by path, archive members by name): plain text (one document per line, or runs of
non-blank lines with --document-boundary blank-line), JSON lines (.json/.jsonl/.ndjson, or
--input-format jsonl) with the text under --json-keys (one output per key, as Megatron names them:
PREFIX_{key}_document), Parquet (.parquet, the --json-keys columns); each plain or .gz/.bz2/.xz/.zst,
or inside .zip/.tar/.tar.gz archives, streamed without extracting. Flag names follow Megatron-LM's
tools/preprocess_data.py where it has them.

The final lines give the [UNK] share (and the characters behind it) and one line per input; .meta.json
holds the full report. --normalize punctuation maps characters the vocab lacks (curly quotes, dashes,
ellipses) to equivalents it has before tokenizing; the default keeps BertTokenizer's ids exactly.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.data.preprocess.config import RUNTIME, TOKENIZER, TOKENIZER_TYPES, PreprocessConfig
from megatron_zh.data.preprocess.pipeline import preprocess
from megatron_zh.knobs import add_flags, given_values
from megatron_zh.validators import POSITIVE_NUMBER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = add_flags(parser, PreprocessConfig)
    # Flags that are not one config field each: Megatron's spellings, and sizes in friendlier units.
    groups[TOKENIZER].add_argument(
        "--tokenizer-type",
        choices=sorted(TOKENIZER_TYPES),
        default="BertWordPieceLowerCase",
        help="Megatron's name of the tokenizer; BertWordPieceCase keeps case and accents "
        "(default: BertWordPieceLowerCase)",
    )
    groups[RUNTIME].add_argument(
        "--dataset-impl", choices=["mmap"], default="mmap", help="accepted for Megatron compatibility"
    )
    groups[RUNTIME].add_argument("--chunk-mb", type=float, default=1.0, help="input read per task, in MB (default: 1)")
    # The library's default is one process (callers such as evaluation hold torch); the tool uses every CPU.
    parser.set_defaults(workers=len(os.sched_getaffinity(0)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    POSITIVE_NUMBER("--chunk-mb", args.chunk_mb)
    preprocess(
        PreprocessConfig(
            **given_values(args, PreprocessConfig),
            lower_case=TOKENIZER_TYPES[args.tokenizer_type],
            chunk_bytes=math.ceil(args.chunk_mb * (1 << 20)),  # at least one byte: whole lines, the fewest
        )
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
