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

from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.convert.commands import export_main


def main(argv: Sequence[str] | None = None) -> int:
    return export_main(argv, description=__doc__ or "", fmt="uer")


if __name__ == "__main__":
    run_cli(main)
