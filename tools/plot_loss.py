"""Plot a run's loss curve (train and validation loss against iteration) to a PNG.

python tools/plot_loss.py --metrics runs/cpu_tiny/checkpoints/metrics.jsonl --output loss.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from megatron_zh.cli import run_cli
from megatron_zh.training.plot import plot_loss_curve


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", required=True, help="metrics.jsonl in a --save directory")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    print(plot_loss_curve(args.metrics, args.output, args.title))
    return 0


if __name__ == "__main__":
    run_cli(main)
