"""Export a pretrain_gpt.py checkpoint to a Hugging Face folder (GPT2LMHeadModel + BertTokenizer).

  python tools/convert_to_hf.py --checkpoint checkpoints/stage2 --output hf/gpt2-distil-chinese

Reads the fp32 master weights from the ZeRO optimizer shards (any number of ranks; the module's
copy only when there are none), writes config.json, model.safetensors, vocab.txt, the tokenizer
files and generation_config.json, then loads the folder back with transformers and compares its
logits with ours on real text (fp32, tolerance 1e-4). The folder appears only if all of that passes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from megatron_zh.checkpoint.safety import trusting_checkpoints
from megatron_zh.cli import run_cli
from megatron_zh.convert.flags import add_checkpoint_flags, add_conversion_flags, add_vocab_flag
from megatron_zh.convert.formats import export_checkpoint
from megatron_zh.convert.hf.exporter import LOGIT_TOLERANCE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_flags(parser)
    add_vocab_flag(parser, "vocab.txt (default: the run's; must be the vocab it was trained with)")
    add_conversion_flags(parser, "Hugging Face folder")
    args = parser.parse_args(argv)
    with trusting_checkpoints(args.trust_checkpoint):
        result = export_checkpoint(
            "hf", args.checkpoint, args.output, tag=args.tag, vocab_file=args.vocab_file, overwrite=args.overwrite
        )
    print(f"exported {result.checkpoint} (iteration {result.iteration}, weights: {result.weights_source})")
    print(
        f"self-check: max |logit diff| = {result.max_logit_diff:.3g} over {result.self_check_tokens} tokens "
        f"(fp32, tolerance {LOGIT_TOLERANCE:g})"
    )
    print(f"wrote {result.output}: load it with GPT2LMHeadModel.from_pretrained / BertTokenizer.from_pretrained")
    return 0


if __name__ == "__main__":
    run_cli(main)
