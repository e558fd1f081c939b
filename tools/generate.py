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
import os
import sys
import time
from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.inference.generation import GenerationConfig, generate
from megatron_zh.inference.runtime import add_model_arguments, load_from_args
from megatron_zh.inference.sampling import SAMPLING_KNOBS
from megatron_zh.knobs import add_flags, flag_name, from_flat, given_values
from megatron_zh.log import get_logger

logger = get_logger("tools.generate")


def not_utf8(where: str, exc: UnicodeError, fix: str) -> DataFormatError:
    """The one wording for a prompt that is not UTF-8, from a file or from the command line."""
    return DataFormatError(f"{where}: not UTF-8 text ({exc}); {fix}")


def check_prompts(prompts: list[str]) -> list[str]:
    """The --prompt texts, refused if one is not UTF-8 text.

    Python keeps command-line bytes that are not UTF-8 (a shell with a Latin-1 or GBK locale) as lone
    surrogates, which no tokenizer can take; the error names the byte the shell passed.
    """
    for number, text in enumerate(prompts, 1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as encode_error:
            error: UnicodeError = encode_error
            try:
                os.fsencode(text).decode("utf-8")  # the bytes as the shell passed them
            except UnicodeError as exc:
                error = exc
            fix = "run it in a UTF-8 locale (e.g. LANG=C.UTF-8) or put the prompts in a UTF-8 --prompt-file"
            raise not_utf8(f"prompt {number} of --prompt", error, fix) from None
    return prompts


def read_prompts(path: str) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataFormatError(f"--prompt-file {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise not_utf8(f"--prompt-file {path}", exc, "convert the file to UTF-8 (e.g. with iconv)") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise DataFormatError(f"--prompt-file {path}: no prompts (one per line; blank lines are skipped)")
    return prompts


def generation_from_args(args: argparse.Namespace) -> GenerationConfig:
    given = given_values(args, GenerationConfig)
    ignored = [name for name in SAMPLING_KNOBS if name in given]
    if given.get("greedy") and ignored:
        flags = ", ".join(flag_name(name) for name in ignored)
        raise ConfigError(
            f"--greedy always takes the most likely token, so {flags} (sampling options) would be "
            "ignored; drop them, or drop --greedy to sample"
        )
    return from_flat(GenerationConfig, given, "the decoding flags")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    group = parser.add_argument_group("prompts (one of --prompt, --prompt-file)")
    prompts = group.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", nargs="+", metavar="TEXT", help='one or more prompts ("" starts from nothing)')
    prompts.add_argument("--prompt-file", metavar="FILE", help="UTF-8 text file, one prompt per line")
    add_flags(parser, GenerationConfig)
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
    config = generation_from_args(args)
    texts = check_prompts(args.prompt) if args.prompt is not None else read_prompts(args.prompt_file)
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
