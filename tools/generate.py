"""Generate Chinese text from a trained model: our checkpoint or a Hugging Face folder.

  python tools/generate.py --checkpoint checkpoints/run1 --prompt "今天天气" --max-new-tokens 64
  python tools/generate.py --hf hf_export --prompt-file prompts.txt --greedy --no-stream

Each prompt starts a document ([CLS] + prompt); generation ends at [SEP], the end of the
document (--no-stop-at-eod runs on), or after --max-new-tokens. Sampling (the default:
temperature 1, top-k 50) is reproducible: the same --seed gives the same text, whatever the
batch. Text streams to stdout as it is generated, without the spaces BertTokenizer puts between
Chinese characters; --json prints one JSON object per prompt instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.inference import GenerationConfig, SamplingConfig, generate
from megatron_zh.inference.runtime import add_model_arguments, load_from_args
from megatron_zh.log import get_logger

logger = get_logger("tools.generate")

DEFAULTS = SamplingConfig()


def read_prompts(path: str) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataFormatError(f"--prompt-file {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"--prompt-file {path}: not UTF-8 text ({exc})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise DataFormatError(f"--prompt-file {path}: no prompts (one per line; blank lines are skipped)")
    return prompts


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    names = ("temperature", "top_k", "top_p")
    chosen = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.greedy and chosen:
        flags = ", ".join("--" + name.replace("_", "-") for name in chosen)
        raise ConfigError(
            f"--greedy always takes the most likely token, so {flags} (sampling options) would be "
            "ignored; drop them, or drop --greedy to sample"
        )
    return SamplingConfig(greedy=args.greedy, seed=args.seed, **chosen)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    group = parser.add_argument_group("prompts (one of --prompt, --prompt-file)")
    prompts = group.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", nargs="+", metavar="TEXT", help='one or more prompts ("" starts from nothing)')
    prompts.add_argument("--prompt-file", metavar="FILE", help="UTF-8 text file, one prompt per line")
    group = parser.add_argument_group("decoding")
    group.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt (default: 64)")
    group.add_argument("--greedy", action="store_true", help="always take the most likely token (no sampling)")
    group.add_argument("--temperature", type=float, help=f"sampling temperature (default: {DEFAULTS.temperature})")
    group.add_argument(
        "--top-k", type=int, help=f"sample from the k most likely tokens, 0 = all (default: {DEFAULTS.top_k})"
    )
    group.add_argument(
        "--top-p",
        type=float,
        help=f"nucleus sampling: the most likely tokens up to this probability, 1 = all (default: {DEFAULTS.top_p})",
    )
    group.add_argument(
        "--seed", type=int, default=DEFAULTS.seed, help=f"random seed of the sampling (default: {DEFAULTS.seed})"
    )
    group.add_argument(
        "--no-stop-at-eod",
        dest="stop_at_eod",
        action="store_false",
        help="keep going past [SEP] (the end of a document) into a new one (printed as a line break)",
    )
    group = parser.add_argument_group("output")
    group.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="print each text when it is complete, prompts batched (default: stream as generated)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per prompt (prompt, text, tokens, ended_document); implies --no-stream",
    )
    group.add_argument(
        "--batch-size", type=int, default=8, help="prompts generated together without streaming (default: 8)"
    )
    args = parser.parse_args(argv)

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, sampling=sampling_from_args(args), stop_at_eod=args.stop_at_eod
    )
    texts = args.prompt if args.prompt is not None else read_prompts(args.prompt_file)
    loaded, _ = load_from_args(args)
    stream = args.stream and not args.json
    batch_size = 1 if stream else args.batch_size

    def print_piece(_: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    start, new_tokens = time.perf_counter(), 0
    for first in range(0, len(texts), batch_size):
        batch = texts[first : first + batch_size]
        if stream:
            print(batch[0], end="", flush=True)
        # Prompt i keeps random stream i whatever the batching, so --no-stream prints the same text.
        results = generate(
            loaded.model, loaded.tokenizer, batch, config, on_text=print_piece if stream else None, first_row_id=first
        )
        for result in results:
            new_tokens += len(result.token_ids)
            if args.json:
                print(
                    json.dumps(
                        {
                            "prompt": result.prompt,
                            "text": result.text,
                            "tokens": len(result.token_ids),
                            "ended_document": result.ended_document,
                        },
                        ensure_ascii=False,
                    ),
                    flush=True,
                )
            elif stream:
                print(flush=True)
            else:
                print(result.prompt + result.text, flush=True)
    seconds = time.perf_counter() - start
    logger.info(
        "%d prompt(s), %d new tokens in %.2f s (%.1f tokens/s)",
        len(texts),
        new_tokens,
        seconds,
        new_tokens / max(seconds, 1e-9),
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
