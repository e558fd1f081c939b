"""What tools/generate.py and tools/evaluate.py share: the model flags, loading, the device."""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

from megatron_zh.checkpoint.safety import TRUST_FLAG_HELP, trusting_checkpoints
from megatron_zh.convert.loading import LoadedModel, load_model
from megatron_zh.errors import ConfigError
from megatron_zh.log import get_logger

logger = get_logger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (one of --checkpoint, --hf)")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", metavar="DIR", help="a checkpoint directory written by pretrain_gpt.py (its --save)"
    )
    source.add_argument("--hf", metavar="DIR", help="a Hugging Face GPT-2 folder (tools/convert_to_hf.py output)")
    group.add_argument("--tag", help="checkpoint tag, e.g. global_step1000 (default: the one named in `latest`)")
    group.add_argument("--vocab-file", help="vocab.txt (default: the checkpoint's training vocab, or the HF folder's)")
    group.add_argument("--trust-checkpoint", action="store_true", help=TRUST_FLAG_HELP)
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
    if args.tag is not None and args.checkpoint is None:
        raise ConfigError("--tag selects a checkpoint of --checkpoint DIR; an --hf folder has no tags")
    device = resolve_device(args.device)
    # Reading a DeepSpeed checkpoint imports deepspeed, whose logger prints to stdout; stdout is
    # the tools' output (text, one JSON line), so anything said while loading goes to stderr.
    with trusting_checkpoints(args.trust_checkpoint), contextlib.redirect_stdout(sys.stderr):
        loaded = load_model(checkpoint=args.checkpoint, tag=args.tag, hf=args.hf, vocab_file=args.vocab_file)
    loaded.model.to(device).eval()
    config = loaded.model.config
    logger.info(
        "loaded %s: %d layers, hidden %d, %d positions, %.1f M parameters, on %s",
        loaded.source,
        config.num_layers,
        config.hidden_size,
        config.max_position_embeddings,
        loaded.model.num_parameters() / 1e6,
        device,
    )
    return loaded, device
