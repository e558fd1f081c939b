"""The flags every tool that reads or writes models shares, spelled once: which checkpoint, the vocab, the output.

The conversion commands (commands.py) and tools/generate.py and evaluate.py (inference/runtime.py)
use them; --trust-checkpoint is checkpoint.safety.add_trust_flag.
"""

from __future__ import annotations

import argparse

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
