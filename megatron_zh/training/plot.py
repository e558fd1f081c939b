"""Loss curve of a run: train loss per logged step and validation loss (the split's, and one curve per
--valid-data-path source), from its metrics.jsonl."""

from __future__ import annotations

import os
from pathlib import Path

from megatron_zh.errors import DataFormatError
from megatron_zh.fileio import write_figure
from megatron_zh.training.metrics import read_metrics

Curve = tuple[list[int], list[float]]  # iterations, losses


def loss_curves(metrics_file: str | os.PathLike) -> dict[str, Curve]:
    """{label: curve}: "train loss", "validation loss" and "validation loss: SOURCE" for each source logged."""
    train = read_metrics(metrics_file, "train")
    if not train:
        raise DataFormatError(
            f"{metrics_file} holds no training records; is it the metrics.jsonl of a run "
            "that logged at least one step (--log-interval)?"
        )
    curves: dict[str, Curve] = {"train loss": ([r["iteration"] for r in train], [r["loss"] for r in train])}
    for record in read_metrics(metrics_file, "eval"):
        if record.get("split", "valid") != "valid":
            continue
        label = f"validation loss: {record['source']}" if record.get("source") else "validation loss"
        iterations, losses = curves.setdefault(label, ([], []))
        iterations.append(record["iteration"])
        losses.append(record["loss"])
    return curves


def plot_loss_curve(metrics_file: str | os.PathLike, output: str | os.PathLike, title: str | None = None) -> Path:
    """Write a PNG of `loss_curves` against iteration; returns its path."""
    curves = loss_curves(metrics_file)
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for label, (iterations, losses) in curves.items():
        style = {"linewidth": 1.2} if label == "train loss" else {"marker": "o", "markersize": 3}
        ax.plot(iterations, losses, label=label, **style)
    ax.set_xlabel("iteration")
    ax.set_ylabel("lm loss (nats/token)")
    ax.set_title(title or f"{Path(metrics_file).parent.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return write_figure(fig, output)
