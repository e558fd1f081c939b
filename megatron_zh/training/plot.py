"""Loss curve of a run: train loss per logged step and validation loss, from its metrics.jsonl."""

from __future__ import annotations

import os
from pathlib import Path

from megatron_zh.errors import DataFormatError
from megatron_zh.fileio import atomic_write
from megatron_zh.training.metrics import read_metrics


def plot_loss_curve(metrics_file: str | os.PathLike, output: str | os.PathLike, title: str | None = None) -> Path:
    """Write a PNG of train (and validation, when logged) loss against iteration; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    train = read_metrics(metrics_file, "train")
    valid = [r for r in read_metrics(metrics_file, "eval") if r.get("split", "valid") == "valid"]
    if not train:
        raise DataFormatError(
            f"{metrics_file} holds no training records; is it the metrics.jsonl of a run "
            "that logged at least one step (--log-interval)?"
        )
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot([r["iteration"] for r in train], [r["loss"] for r in train], label="train loss", linewidth=1.2)
    if valid:
        ax.plot([r["iteration"] for r in valid], [r["loss"] for r in valid], "o-", label="validation loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("lm loss (nats/token)")
    ax.set_title(title or f"{Path(metrics_file).parent.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    output = Path(output)
    with atomic_write(output, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return output
