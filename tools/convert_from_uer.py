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

import argparse
from collections.abc import Sequence

from megatron_zh.checkpoint.safety import trusting_checkpoints
from megatron_zh.cli import run_cli
from megatron_zh.convert.flags import add_conversion_flags, add_vocab_flag
from megatron_zh.convert.formats import import_model
from megatron_zh.convert.uer.names import LAYER_NORM_NOTE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, metavar="MODEL.bin", help="a UER-py GPT-2 model file")
    parser.add_argument("--uer-config", metavar="CONFIG.json", help="its UER-py config (models/gpt2/*.json)")
    parser.add_argument(
        "--num-attention-heads", type=int, help="heads per layer, when there is no --uer-config (12 for distil)"
    )
    add_vocab_flag(parser, "the vocab.txt the model was trained with (required: the model file carries none)")
    add_conversion_flags(parser, "checkpoint directory")
    args = parser.parse_args(argv)
    with trusting_checkpoints(args.trust_checkpoint):
        folder = import_model(
            "uer",
            args.input,
            args.output,
            vocab_file=args.vocab_file,
            overwrite=args.overwrite,
            uer_config=args.uer_config,
            num_attention_heads=args.num_attention_heads,
        )
    print(f"wrote {folder}; continue training with: pretrain_gpt.py --load {args.output} --finetune ...")
    print(f"note: {LAYER_NORM_NOTE}")
    return 0


if __name__ == "__main__":
    run_cli(main)
