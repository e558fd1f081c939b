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

from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.convert.commands import import_main


def main(argv: Sequence[str] | None = None) -> int:
    return import_main(argv, description=__doc__ or "", fmt="hf")


if __name__ == "__main__":
    run_cli(main)
