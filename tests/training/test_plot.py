"""tools/plot_loss.py: a PNG of the loss curve from metrics.jsonl, and a clear error without records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from megatron_zh.errors import DataFormatError
from megatron_zh.training.plot import loss_curves, plot_loss_curve


def _write_metrics(path, train_losses, eval_losses):
    lines = [{"kind": "train", "iteration": i + 1, "loss": loss} for i, loss in enumerate(train_losses)]
    lines += [{"kind": "eval", "split": "valid", "iteration": i, "loss": loss} for i, loss in eval_losses]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "train", "iter')  # torn last line


@pytest.mark.integration
def test_plot_writes_a_png_of_the_run(tmp_path, repo_root):
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(metrics, [10.0 - 0.1 * i for i in range(40)], [(20, 8.5), (40, 7.0)])
    result = subprocess.run(
        [
            sys.executable,
            str(repo_root / "tools" / "plot_loss.py"),
            "--metrics",
            str(metrics),
            "--output",
            str(tmp_path / "loss.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    png = (tmp_path / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (840, 480)  # 7 x 4 inches at 120 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl"]  # no temporary left


def test_plot_without_training_records_is_a_clear_error(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(metrics, [], [(10, 7.0)])
    with pytest.raises(DataFormatError, match="holds no training records"):
        plot_loss_curve(metrics, tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()


def test_one_validation_curve_per_source(tmp_path):
    """The split's validation loss and each --valid-data-path source's, as metrics.jsonl records them."""
    metrics = tmp_path / "metrics.jsonl"
    records = [{"kind": "train", "iteration": i, "loss": 9.0 - i} for i in (1, 2, 3, 4)]
    for iteration in (2, 4):
        records.append({"kind": "eval", "split": "valid", "iteration": iteration, "loss": 8.0 - iteration})
        for source, offset in (("news", 0.5), ("reviews", 1.5)):
            records.append(
                {
                    "kind": "eval",
                    "split": "valid",
                    "source": source,
                    "iteration": iteration,
                    "loss": 8.0 - iteration + offset,
                }
            )
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert loss_curves(metrics) == {
        "train loss": ([1, 2, 3, 4], [8.0, 7.0, 6.0, 5.0]),
        "validation loss": ([2, 4], [6.0, 4.0]),
        "validation loss: news": ([2, 4], [6.5, 4.5]),
        "validation loss: reviews": ([2, 4], [7.5, 5.5]),
    }
    assert plot_loss_curve(metrics, tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
