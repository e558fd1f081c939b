"""Merge several Megatron .bin/.idx datasets into one (e.g. the outputs of partitioned preprocessing runs).

  python tools/merge_datasets.py --input a_text_document b_text_document --output-prefix merged_text_document
  python tools/merge_datasets.py --input 'shards/part_*_text_document' --output-prefix merged_text_document

Documents keep their order (inputs in the order given; a glob expands sorted). Every input needs its
PREFIX.meta.json, and all must share the vocab fingerprint, lower-casing, document framing and token
dtype; --allow-missing-metadata merges inputs without metadata too (the output then claims no vocab
fingerprint). The output may not be any input's file, whatever the spelling of the path; an output
that exists is refused unless --overwrite (then replaced once the merged dataset is complete).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.data.indexed.merge import expand_prefixes, merge_datasets
from megatron_zh.log import get_logger

logger = get_logger("tools.merge_datasets")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--input", nargs="+", required=True, help="dataset prefixes (PREFIX.bin/.idx), or globs of them, in merge order"
    )
    parser.add_argument("--output-prefix", required=True, help="prefix of the merged PREFIX.bin/.idx")
    parser.add_argument(
        "--allow-missing-metadata",
        action="store_true",
        help="merge inputs without PREFIX.meta.json (e.g. made by Megatron-LM); the output then has no vocab "
        "fingerprint, so training cannot check the vocab",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output dataset if it exists (only once the merged one is complete)",
    )
    args = parser.parse_args(argv)
    inputs = expand_prefixes(args.input)
    meta = merge_datasets(
        inputs, args.output_prefix, allow_missing_metadata=args.allow_missing_metadata, overwrite=args.overwrite
    )
    logger.info(
        "merged %d datasets into %s: %d documents, %d tokens",
        len(inputs),
        args.output_prefix,
        meta["documents"],
        meta["tokens"],
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
