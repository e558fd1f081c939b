"""What tools/generate.py and tools/evaluate.py share: the model flags, loading, the device."""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

from megatron_zh.checkpoint.safety import add_trust_flag, trusting_checkpoints
from megatron_zh.convert.flags import add_checkpoint_flags, add_vocab_flag
from megatron_zh.convert.formats import FORMATS
from megatron_zh.convert.loading import CHECKPOINT, LoadedModel, load_model, loadable_formats
from megatron_zh.errors import ConfigError
from megatron_zh.log import get_logger

logger = get_logger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint DIR or one --<format> PATH per format read from its path alone (--hf), and what goes with them."""
    others = [name for name in loadable_formats() if name != CHECKPOINT]
    group = parser.add_argument_group(f"model (one of --checkpoint, {', '.join('--' + name for name in others)})")
    source = group.add_mutually_exclusive_group(required=True)
    add_checkpoint_flags(source, required=False, tag_group=group)
    for name in others:
        source.add_argument(
            f"--{name}", metavar="PATH", help=f"{FORMATS[name].title} (tools/convert_to_{name}.py output)"
        )
    add_vocab_flag(group, "vocab.txt (default: the checkpoint's training vocab, or the one the model folder carries)")
    add_trust_flag(group)
    group.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda when available (default)")


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but PyTorch sees no CUDA device; use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def load_from_args(args: argparse.Namespace) -> tuple[LoadedModel, torch.device]:
    """The model the flags name, on the chosen device, in eval mode."""
    fmt = next(name for name in loadable_formats() if getattr(args, name, None) is not None)
    if args.tag is not None and fmt != CHECKPOINT:
        raise ConfigError(f"--tag selects a checkpoint of --checkpoint DIR; --{fmt} ({FORMATS[fmt].title}) has no tags")
    device = resolve_device(args.device)
    # Reading a DeepSpeed checkpoint imports deepspeed, whose logger prints to stdout; stdout is
    # the tools' output (text, one JSON line), so anything said while loading goes to stderr.
    with trusting_checkpoints(args.trust_checkpoint), contextlib.redirect_stdout(sys.stderr):
        loaded = load_model(getattr(args, fmt), fmt, tag=args.tag, vocab_file=args.vocab_file)
    loaded.model.to(device).eval()
    config = loaded.model.config
    logger.info(
        "loaded %s: %d layers, hidden %d, %d positions, %.1f M parameters, on %s (fused ops: %s)",
        loaded.source,
        config.num_layers,
        config.hidden_size,
        config.max_position_embeddings,
        loaded.model.num_parameters() / 1e6,
        device,
        loaded.model.kernels_for(device).describe(),
    )
    return loaded, device
