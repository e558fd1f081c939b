"""The flags every conversion tool shares, spelled once: which checkpoint, where the output goes, trust.

tools/convert_to_*.py read a checkpoint and write a format; tools/convert_from_*.py read a format
and write a checkpoint; tools/generate.py and evaluate.py read either (inference/runtime.py).
"""

from __future__ import annotations

import argparse

from megatron_zh.checkpoint.safety import add_trust_flag

Group = argparse.ArgumentParser | argparse._ArgumentGroup


def add_checkpoint_flags(parser: Group, *, required: bool = True, tag_group: Group | None = None) -> None:
    """--checkpoint DIR and --tag: a checkpoint pretrain_gpt.py wrote (its --save directory). `tag_group` takes
    --tag when `parser` is a group of alternatives (a model from a checkpoint or from another format)."""
    parser.add_argument(
        "--checkpoint", required=required, metavar="DIR", help="the --save directory of a pretrain_gpt.py run"
    )
    (tag_group or parser).add_argument(
        "--tag", help="checkpoint to read, e.g. global_step1000 (default: the one `latest` names)"
    )


def add_vocab_flag(parser: Group, help: str) -> None:
    parser.add_argument("--vocab-file", metavar="VOCAB.txt", help=help)


def add_output_flags(parser: argparse.ArgumentParser, what: str, metavar: str = "DIR") -> None:
    """--output and --overwrite; an existing output is replaced only after the new one is complete."""
    parser.add_argument("--output", required=True, metavar=metavar, help=f"the {what} to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output if it exists (after the new one is complete)"
    )


def add_conversion_flags(parser: argparse.ArgumentParser, what: str, metavar: str = "DIR") -> None:
    """--output, --overwrite and --trust-checkpoint: every conversion writes an output and reads pickles."""
    add_output_flags(parser, what, metavar)
    add_trust_flag(parser)
