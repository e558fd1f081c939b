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

from megatron_zh.checkpoint.safety import add_trust_flag, trusting_checkpoints
from megatron_zh.cli import run_cli
from megatron_zh.convert.hf_export import LOGIT_TOLERANCE, export_to_hf


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="the --save directory of a pretrain_gpt.py run"
    )
    parser.add_argument("--tag", help="checkpoint to export, e.g. global_step1000 (default: the one `latest` names)")
    parser.add_argument("--output", required=True, metavar="DIR", help="the Hugging Face folder to write")
    parser.add_argument("--vocab-file", help="vocab.txt (default: the run's; must be the vocab it was trained with)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output if it exists (after the new one passes)"
    )
    add_trust_flag(parser)
    args = parser.parse_args(argv)
    with trusting_checkpoints(args.trust_checkpoint):
        result = export_to_hf(
            args.checkpoint, args.output, tag=args.tag, vocab_file=args.vocab_file, overwrite=args.overwrite
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
