"""The conversion tools' bodies: flags derived from the format's table entry, the driver, what to print.

    python tools/convert_checkpoint.py --to hf --checkpoint checkpoints/stage2 --output gpt2-distil-chinese
    python tools/convert_checkpoint.py --from uer --input model.bin --uer-config config.json \\
        --vocab-file vocab.txt --output checkpoints/uer

tools/convert_checkpoint.py takes any format of formats.FORMATS (a new format needs no new tool);
tools/convert_to_hf.py, convert_from_uer.py, ... are the same commands with the format fixed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from megatron_zh.checkpoint.safety import add_trust_flag, trusting_checkpoints
from megatron_zh.convert.flags import add_checkpoint_flags, add_output_flags, add_vocab_flag
from megatron_zh.convert.formats import FORMATS, export_checkpoint, import_model, model_format
from megatron_zh.knobs import add_flags, given_values

EXPORT, IMPORT = "--to", "--from"


def _chosen_format(argv: Sequence[str], flag: str) -> str | None:
    """The value of `flag` in argv, read before the full parser exists (its flags depend on the format)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument(flag, dest="fmt")
    return early.parse_known_args(argv)[0].fmt


def _parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def export_main(argv: Sequence[str] | None, *, description: str, fmt: str | None = None) -> int:
    """Write a checkpoint in format `fmt` (None: the --to flag names it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(description)
    if fmt is None:
        writable = [name for name, spec in FORMATS.items() if spec.exporter is not None]
        parser.add_argument(EXPORT, dest="fmt", required=True, choices=writable, help="the format to write")
        fmt = _chosen_format(argv, EXPORT)
    exporter = model_format(fmt, "exporter").exporter if fmt in FORMATS else None
    add_checkpoint_flags(parser)
    add_output_flags(
        parser, exporter.output_what if exporter else "output", exporter.output_metavar if exporter else "PATH"
    )
    add_trust_flag(parser)
    if exporter is not None and exporter.options is not None:
        add_flags(parser, exporter.options)
    args = parser.parse_args(argv)
    name = fmt or args.fmt
    assert exporter is not None  # argparse refused a missing or unknown --to
    options = given_values(args, exporter.options) if exporter.options is not None else {}
    with trusting_checkpoints(args.trust_checkpoint):
        result = export_checkpoint(
            name, args.checkpoint, args.output, tag=args.tag, overwrite=args.overwrite, **options
        )
    for line in exporter.report(result):
        print(line)
    return 0


def import_main(argv: Sequence[str] | None, *, description: str, fmt: str | None = None) -> int:
    """Read a model in format `fmt` (None: the --from flag names it) into a new checkpoint directory."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(description)
    source_flag, source_metavar = "--input", "PATH"
    if fmt is None:
        readable = [name for name, spec in FORMATS.items() if spec.importer is not None]
        parser.add_argument(IMPORT, dest="fmt", required=True, choices=readable, help="the format to read")
        fmt = _chosen_format(argv, IMPORT)
        importer = model_format(fmt, "importer").importer if fmt in FORMATS else None
    else:
        importer = model_format(fmt, "importer").importer
        assert importer is not None
        source_flag, source_metavar = importer.source_flag, importer.source_metavar
    title = FORMATS[fmt].title if fmt in FORMATS else "the model to read"
    parser.add_argument(source_flag, dest="source", required=True, metavar=source_metavar, help=title)
    add_vocab_flag(parser, "vocab.txt (default: the one the model carries; needed when it carries none)")
    add_output_flags(parser, "checkpoint directory")
    add_trust_flag(parser)
    if importer is not None and importer.options is not None:
        add_flags(parser, importer.options)
    args = parser.parse_args(argv)
    name = fmt or args.fmt
    assert importer is not None  # argparse refused a missing or unknown --from
    options = given_values(args, importer.options) if importer.options is not None else {}
    with trusting_checkpoints(args.trust_checkpoint):
        folder = import_model(
            name, args.source, args.output, vocab_file=args.vocab_file, overwrite=args.overwrite, **options
        )
    print(f"wrote {folder}; continue training with: pretrain_gpt.py --load {args.output} --finetune ...")
    for note in importer.notes:
        print(f"note: {note}")
    return 0


def convert_main(argv: Sequence[str] | None, *, description: str) -> int:
    """tools/convert_checkpoint.py: --to FORMAT writes a checkpoint in it, --from FORMAT reads one into a checkpoint."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _chosen_format(argv, IMPORT) is not None:
        return import_main(argv, description=description)
    return export_main(argv, description=description)
