"""Tokenize a corpus into Megatron's .bin/.idx (BERT-Chinese WordPiece, documents framed [CLS] ... [SEP]).

  python tools/preprocess_data.py --input corpus.txt --output-prefix data/clue \\
      --vocab-file google_zh_vocab.txt --workers 2
  # -> data/clue_text_document.bin / .idx / .meta.json

Inputs: plain text, one document per line (CLUECorpusSmall, UER-py), or JSON lines (.json/.jsonl/
.ndjson, or --input-format jsonl) with the text under --json-keys (one output per key, as Megatron
names them: PREFIX_{key}_document). Several files and globs may be given; they are read in order.
Flag names follow Megatron-LM's tools/preprocess_data.py where it has them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.data.preprocess import preprocess
from megatron_zh.data.preprocess_config import TOKENIZER_TYPES, PreprocessConfig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("input")
    group.add_argument("--input", nargs="+", required=True, help="input files or glob patterns (quote globs)")
    group.add_argument(
        "--input-format",
        choices=["auto", "text", "jsonl"],
        default="auto",
        help="auto: .json/.jsonl/.ndjson are JSON lines, anything else plain text (default)",
    )
    group.add_argument("--json-keys", nargs="+", default=["text"], help="JSON keys to tokenize (default: text)")
    group = parser.add_argument_group("tokenizer")
    group.add_argument(
        "--vocab-file",
        required=True,
        help="BERT vocab.txt (the default BERT-Chinese one: python tools/fetch_assets.py)",
    )
    group.add_argument(
        "--tokenizer-type",
        choices=sorted(TOKENIZER_TYPES),
        default="BertWordPieceLowerCase",
        help="Megatron's name of the tokenizer (default: BertWordPieceLowerCase)",
    )
    group.add_argument(
        "--prepend-cls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start every document with [CLS] (default: yes)",
    )
    group.add_argument(
        "--append-eod",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end every document with [SEP], the end-of-document token (default: yes)",
    )
    group = parser.add_argument_group("output")
    group.add_argument("--output-prefix", required=True, help="writes PREFIX_{key}_document.bin/.idx/.meta.json")
    group.add_argument("--dataset-impl", choices=["mmap"], default="mmap", help="accepted for Megatron compatibility")
    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="tokenizer processes (default: the CPUs this process may use)",
    )
    group.add_argument(
        "--strict",
        action="store_true",
        help="stop with an error at the first bad line instead of reporting and skipping it",
    )
    group.add_argument("--chunk-mb", type=float, default=1.0, help="input read per task, in MB (default: 1)")
    group.add_argument(
        "--log-interval",
        type=int,
        default=100_000,
        help="documents between progress lines when stderr is not a terminal (default: 100000)",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    args = parser.parse_args(argv)

    preprocess(
        PreprocessConfig(
            inputs=args.input,
            output_prefix=args.output_prefix,
            vocab_file=args.vocab_file,
            json_keys=tuple(args.json_keys),
            input_format=args.input_format,
            workers=args.workers,
            prepend_cls=args.prepend_cls,
            append_eod=args.append_eod,
            lower_case=TOKENIZER_TYPES[args.tokenizer_type],
            strict=args.strict,
            chunk_bytes=max(1, int(args.chunk_mb * (1 << 20))),
            log_interval=args.log_interval,
            progress=not args.no_progress,
        )
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
