"""Import a UER-py GPT-2 model file as a checkpoint pretrain_gpt.py starts from.

  python tools/convert_from_uer.py --input models/cluecorpussmall_gpt2_distil_seq1024_model.bin \\
      --uer-config models/gpt2/distil_config.json --vocab-file models/google_zh_vocab.txt \\
      --output checkpoints/uer_distil
  deepspeed --num_gpus 8 pretrain_gpt.py --ds_config ds_configs/uer_stage2.json \\
      --load checkpoints/uer_distil --finetune --save checkpoints/stage2

The model file is a state dict saved by UER-py's pretrain.py (--embedding word_pos --encoder
transformer --mask causal --target lm --tie_weights), read with PyTorch's restricted unpickler.
Without --uer-config the sizes come from the tensors and --num-attention-heads must be given.
The output is a save directory with `latest` -> global_step0 (fp32 weights, the vocab's
fingerprint, no optimizer state): start from it with --finetune, or export it with
tools/convert_to_hf.py, generate or evaluate with it (--vocab-file).

The weights carry over exactly, but UER-py's LayerNorm divides by (unbiased std + 1e-6), ours by
sqrt(biased var + 1e-5): the converted model's logits differ slightly from UER-py's.
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.convert.commands import import_main


def main(argv: Sequence[str] | None = None) -> int:
    return import_main(argv, description=__doc__ or "", fmt="uer")


if __name__ == "__main__":
    run_cli(main)
