"""Export a pretrain_gpt.py checkpoint to a Hugging Face folder (GPT2LMHeadModel + BertTokenizer).

  python tools/convert_to_hf.py --checkpoint checkpoints/stage2 --output hf/gpt2-distil-chinese

Reads the fp32 master weights from the ZeRO optimizer shards (any number of ranks; the module's
copy only when there are none), writes config.json, model.safetensors, vocab.txt, the tokenizer
files and generation_config.json, then loads the folder back with transformers and compares its
logits with ours on real text (fp32, tolerance 1e-4). The folder appears only if all of that passes.
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.convert.commands import export_main


def main(argv: Sequence[str] | None = None) -> int:
    return export_main(argv, description=__doc__ or "", fmt="hf")


if __name__ == "__main__":
    run_cli(main)
