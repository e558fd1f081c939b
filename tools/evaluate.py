"""Loss and perplexity of a trained model (our checkpoint or a Hugging Face folder) on a corpus.

  python tools/evaluate.py --checkpoint checkpoints/run1 --input data/clue_text_document --seq-length 128
  python tools/evaluate.py --hf hf_export --input corpus.txt --seq-length 1024 --batch-size 4

--input is a preprocessed dataset prefix (PREFIX.bin/.idx; its vocab fingerprint must match the
model's) or a text file of documents, one per line (.jsonl/.json/.ndjson: JSON lines, --json-key).
Documents are framed [CLS] text [SEP] and packed into --seq-length + 1 windows in file order, as
training packs them, without shuffling; every token after the first is predicted exactly once
(the tail shorter than a window is scored in a last window with full context). Prints one JSON
line: loss (nats per token), perplexity, tokens (predictions counted), windows, documents, ...
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.inference.evaluation import EvaluationConfig, evaluate_input, locate_input
from megatron_zh.inference.runtime import add_model_arguments, load_from_args
from megatron_zh.knobs import add_flags, from_flat, given_values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    group = parser.add_argument_group("data")
    group.add_argument(
        "--input",
        required=True,
        metavar="FILE_OR_PREFIX",
        help="dataset prefix (PREFIX.bin/.idx) or text file, one document per line",
    )
    add_flags(parser, EvaluationConfig, groups={"data": group})
    args = parser.parse_args(argv)

    config = from_flat(EvaluationConfig, given_values(args, EvaluationConfig), "the data flags")
    locate_input(args.input)  # a mistyped path fails before the model loads
    loaded, device = load_from_args(args)
    result = evaluate_input(loaded.model, loaded.tokenizer, args.input, config, device)
    print(
        json.dumps({**result.to_dict(), "source": loaded.source, "device": str(device)}, ensure_ascii=False), flush=True
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
