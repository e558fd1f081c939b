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
    group.add_argument("--seq-length", type=int, required=True, help="window length, as in training (e.g. 128 or 1024)")
    group.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="windows per forward pass (default: 8; logits take batch x seq x 21128 x 4 bytes)",
    )
    group.add_argument(
        "--max-tokens", type=int, help="evaluate only the first N tokens of the input (framing included)"
    )
    group.add_argument(
        "--eod-mask-loss",
        action="store_true",
        help="do not score predictions made from [SEP] (as training with --eod-mask-loss)",
    )
    group.add_argument("--json-key", default="text", help="the text key of a JSON-lines input (default: text)")
    group.add_argument(
        "--strict", action="store_true", help="stop at the first bad line of a text input (default: report and skip it)"
    )
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress on stderr")
    args = parser.parse_args(argv)

    config = EvaluationConfig(
        seq_length=args.seq_length,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        eod_mask_loss=args.eod_mask_loss,
        json_key=args.json_key,
        strict=args.strict,
        progress=args.progress,
    )
    locate_input(args.input)  # a mistyped path fails before the model loads
    loaded, device = load_from_args(args)
    result = evaluate_input(loaded.model, loaded.tokenizer, args.input, config, device)
    print(
        json.dumps({**result.to_dict(), "source": loaded.source, "device": str(device)}, ensure_ascii=False), flush=True
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
