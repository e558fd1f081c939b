"""Export a pretrain_gpt.py checkpoint as a UER-py GPT-2 model file and its config JSON.

  python tools/convert_to_uer.py --checkpoint checkpoints/stage2 --output models/gpt2_distil_model.bin
  # -> models/gpt2_distil_model.bin (state dict) and models/gpt2_distil_model.json (config)
  python UER-py/scripts/generate_lm.py --load_model_path models/gpt2_distil_model.bin \\
      --config_path models/gpt2_distil_model.json --vocab_path google_zh_vocab.txt ...

Reads the fp32 master weights (as tools/convert_to_hf.py does) and writes UER-py's names: separate
Q/K/V `self_attn.linear_layers.{0,1,2}`, `layer_norm_*.gamma/beta`, and `target.lm.output_layer.weight`
as its own tensor equal to the word embedding. The config carries the sizes and UER-py's
architecture flags (word_pos embedding without LayerNorm, pre-LN transformer, causal mask, lm
target, tied weights). Both files are written under temporary names and renamed when complete.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from megatron_zh.checkpoint.safety import trusting_checkpoints
from megatron_zh.cli import run_cli
from megatron_zh.convert.flags import add_checkpoint_flags, add_conversion_flags
from megatron_zh.convert.formats import export_checkpoint
from megatron_zh.convert.uer.names import LAYER_NORM_NOTE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_flags(parser)
    add_conversion_flags(parser, "UER-py model file", metavar="MODEL.bin")
    parser.add_argument(
        "--uer-config-output", metavar="CONFIG.json", help="where to write its UER-py config (default: MODEL.json)"
    )
    args = parser.parse_args(argv)
    with trusting_checkpoints(args.trust_checkpoint):
        result = export_checkpoint(
            "uer",
            args.checkpoint,
            args.output,
            tag=args.tag,
            overwrite=args.overwrite,
            config_output=args.uer_config_output,
        )
    print(f"exported {result.checkpoint} (weights: {result.weights_source}, {result.parameters:,} parameters)")
    print(f"wrote {result.model_file} (--load_model_path) and {result.config_file} (--config_path)")
    print(f"note: {LAYER_NORM_NOTE}")
    return 0


if __name__ == "__main__":
    run_cli(main)
