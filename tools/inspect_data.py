"""What a dataset holds and what the model sees of it: counts, the [UNK] share, document lengths, any sample.

  python tools/inspect_data.py --data-path data/clue_text_document --vocab-file google_zh_vocab.txt
  python tools/inspect_data.py --data-path 0.7 data/news_text_document 0.3 data/web_text_document \\
      --vocab-file google_zh_vocab.txt --plot lengths.png
  python tools/inspect_data.py --data-path data/clue_text_document --vocab-file google_zh_vocab.txt \\
      --seq-length 128 --sample 0 --num-samples 64000000      # sample 0 of a 1M-step x 64 run

For each corpus of --data-path (and each --valid-data-path source): documents, tokens, the [UNK] share
(counted on the tokens), the text normalisation it was made with, and a histogram of document lengths
(a PNG with --plot). With --sample I: sample I of the --sample-from split decoded exactly as training
reads it, for the same --seq-length, --split, --seed and --sample-mode (the trainer's own datasets are
built); the order of samples depends on how many the run builds once it needs more than one epoch, so
pass --num-samples (train_iters x global batch size; for the valid split eval_iters x global batch).
Index files are cached as training caches them (--data-cache-path).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.data.datasets.builder import common_normalization
from megatron_zh.data.datasets.config import DatasetConfig, VocabIds
from megatron_zh.data.datasets.inspection import (
    corpus_prefixes,
    plot_lengths,
    summarize,
    summary_lines,
    training_sample,
)
from megatron_zh.data.datasets.splits import SPLIT_NAMES
from megatron_zh.knobs import add_flags, from_flat, given_values
from megatron_zh.text.tokenizer import BertChineseTokenizer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, DatasetConfig)
    parser.add_argument("--vocab-file", required=True, help="the vocab the data was tokenized with")
    parser.add_argument("--plot", metavar="PNG", help="also draw the document-length histograms to this PNG")
    group = parser.add_argument_group("a training sample")
    group.add_argument("--sample", type=int, metavar="I", help="decode sample I as training reads it")
    group.add_argument("--sample-from", choices=SPLIT_NAMES, default="train", help="its split (default: train)")
    group.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="samples the run builds of that split (default 1: one epoch's order, which every run within "
        "one epoch reads)",
    )
    group.add_argument("--ids", action="store_true", help="print the sample's token ids too (JSON)")
    args = parser.parse_args(argv)
    config = from_flat(DatasetConfig, given_values(args, DatasetConfig), "the data flags")
    tokenizer = BertChineseTokenizer(args.vocab_file)

    prefixes = corpus_prefixes(config) + [prefix for _, prefix in config.validation_sources]
    summaries = [summarize(prefix, tokenizer.unk) for prefix in prefixes]
    for summary in summaries:
        print("\n".join(summary_lines(summary)))
    if args.plot:
        print(f"document lengths: {plot_lengths(summaries, args.plot)}")
    if args.sample is not None:
        normalization = common_normalization(corpus_prefixes(config))  # a blend must not mix them
        vocab = VocabIds(fingerprint=tokenizer.fingerprint, pad=tokenizer.pad, normalization=normalization)
        sample = training_sample(config, args.sample, args.sample_from, args.num_samples, vocab)
        ids = sample["tokens"].tolist()
        scored = int(sample["loss_mask"].sum())
        print(
            f"sample {args.sample} of the {args.sample_from} split ({config.sample_mode}, seq_length "
            f"{config.seq_length}, split {config.split}, seed {config.seed}, --num-samples {args.num_samples}): "
            f"{len(ids)} tokens, {scored} of {config.seq_length} predictions scored"
        )
        if args.ids:
            print(json.dumps(ids))
        print(tokenizer.decode(ids))
    return 0


if __name__ == "__main__":
    run_cli(main)
