"""Import a Hugging Face GPT-2 folder as a checkpoint pretrain_gpt.py starts from.

  python tools/convert_from_hf.py --hf gpt2-distil-chinese-cluecorpussmall --output checkpoints/uer_distil
  deepspeed --num_gpus 8 pretrain_gpt.py --ds_config ds_configs/stage2.json \\
      --load checkpoints/uer_distil --finetune --save checkpoints/stage2

The folder needs config.json (GPT-2 with GELU's tanh form and a tied head), model.safetensors or
pytorch_model.bin, and vocab.txt (or --vocab-file). The output is a save directory with `latest`
-> global_step0 holding the weights in fp32 and the vocab's fingerprint; it has no optimizer state,
so start from it with --finetune.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from megatron_zh.checkpoint.safety import trusting_checkpoints
from megatron_zh.cli import run_cli
from megatron_zh.convert.flags import add_conversion_flags, add_vocab_flag
from megatron_zh.convert.formats import import_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, metavar="DIR", help="a Hugging Face GPT-2 folder")
    add_vocab_flag(parser, "vocab.txt (default: the folder's)")
    add_conversion_flags(parser, "checkpoint directory")
    args = parser.parse_args(argv)
    with trusting_checkpoints(args.trust_checkpoint):
        folder = import_model("hf", args.hf, args.output, vocab_file=args.vocab_file, overwrite=args.overwrite)
    print(f"wrote {folder}; continue training with: pretrain_gpt.py --load {args.output} --finetune ...")
    return 0


if __name__ == "__main__":
    run_cli(main)
