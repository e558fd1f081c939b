"""Train a BERT-style WordPiece vocab.txt on your corpus (for a new domain, or without the published vocab).

  python tools/build_vocab.py --input corpus.txt --output my_vocab.txt --vocab-size 21128
  python tools/preprocess_data.py --input corpus.txt --output-prefix data/my --vocab-file my_vocab.txt

Normalisation is the tokenizer's own (BERT: clean text, CJK characters split, lower-case, accents
stripped), so every character of the corpus is in the vocab. Default layout is BERT-Chinese's:
[PAD]=0, [unused1..99]=1..99, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, learned tokens after.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.data.preprocess.vocab_builder import VocabConfig, train_vocab


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--input", nargs="+", required=True, help="text files (one document per line), JSON lines, or globs"
    )
    parser.add_argument("--output", required=True, help="the vocab.txt to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output if it exists (only once the new vocab is complete)"
    )
    parser.add_argument(
        "--vocab-size", type=int, default=21128, help="tokens in the vocab, reserved ones included (default: 21128)"
    )
    parser.add_argument(
        "--layout",
        choices=["bert", "compact"],
        default="bert",
        help="bert: BERT-Chinese ids ([UNK]=100 .. [MASK]=103, [unused] 1-99); compact: specials at 0-4",
    )
    parser.add_argument("--min-frequency", type=int, default=2, help="least count for a merged piece (default: 2)")
    parser.add_argument("--limit-alphabet", type=int, default=None, help="keep only the N most frequent characters")
    parser.add_argument("--json-key", default="text", help="key holding the text in JSON lines inputs (default: text)")
    parser.add_argument("--cased", action="store_true", help="do not lower-case (nor strip accents)")
    args = parser.parse_args(argv)
    train_vocab(
        VocabConfig(
            inputs=args.input,
            output=args.output,
            vocab_size=args.vocab_size,
            layout=args.layout,
            lower_case=not args.cased,
            min_frequency=args.min_frequency,
            limit_alphabet=args.limit_alphabet,
            json_key=args.json_key,
            overwrite=args.overwrite,
        )
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
