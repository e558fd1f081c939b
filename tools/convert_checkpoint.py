"""Convert between our checkpoints and other model formats: any format of megatron_zh/convert/formats.py.

  python tools/convert_checkpoint.py --to hf --checkpoint checkpoints/stage2 --output gpt2-distil-chinese
  python tools/convert_checkpoint.py --to uer --checkpoint checkpoints/stage2 --output models/gpt2_distil_model.bin
  python tools/convert_checkpoint.py --from hf --input gpt2-distil-chinese --output checkpoints/imported
  python tools/convert_checkpoint.py --from uer --input model.bin --uer-config config.json \\
      --vocab-file google_zh_vocab.txt --output checkpoints/uer

--to FORMAT reads a pretrain_gpt.py checkpoint (its fp32 master weights) and writes FORMAT; --from FORMAT reads
FORMAT into a checkpoint directory that `pretrain_gpt.py --load DIR --finetune` starts from. Each format adds its
own flags (`--to uer --help` lists them). tools/convert_to_hf.py, convert_from_uer.py, ... are this tool with the
format fixed.
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.convert.commands import convert_main


def main(argv: Sequence[str] | None = None) -> int:
    return convert_main(argv, description=__doc__ or "")


if __name__ == "__main__":
    run_cli(main)
