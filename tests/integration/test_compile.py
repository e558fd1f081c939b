"""--compile: the model compiled with torch.compile (inductor) inside the DeepSpeed engine trains, validates and
saves like the eager model: the same losses within float32 noise (dropout off: inductor draws its own random
numbers), and a checkpoint with the same names and weights."""

from __future__ import annotations

import pytest
import torch
from training_runs import SMALL_STEPS, latest, pretrain_args, run

from megatron_zh.checkpoint.master_weights import read_fp32_weights
from megatron_zh.training.metrics import read_metrics

pytestmark = pytest.mark.integration

SHORT = dict(SMALL_STEPS, train_iters=4, hidden_dropout=0, attention_dropout=0)


def test_a_compiled_run_matches_the_eager_run(zh_text_document, tmp_path):
    runs = {}
    for name, flags in (("eager", {}), ("compiled", {"compile": True})):
        save = tmp_path / name
        output = run(pretrain_args(zh_text_document, save, **SHORT, **flags), ranks=None, timeout=600)
        assert f"torch.compile: {'on' if flags else 'off'}" in output
        runs[name] = save
    metrics = {name: save / "metrics.jsonl" for name, save in runs.items()}
    losses = {name: [r["loss"] for r in read_metrics(path)] for name, path in metrics.items()}
    assert len(losses["eager"]) == SHORT["train_iters"]
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5, abs=1e-5)
    valid = {name: [r["loss"] for r in read_metrics(path, "eval")] for name, path in metrics.items()}
    assert len(valid["eager"]) == 1 and valid["compiled"] == pytest.approx(valid["eager"], rel=1e-5, abs=1e-5)
    assert read_metrics(metrics["compiled"], "setup")[0]["compile"] is True

    weights = {name: read_fp32_weights(save / latest(save))[0] for name, save in runs.items()}
    assert list(weights["compiled"]) == list(weights["eager"])  # no "_orig_mod." in the checkpoint
    for key, tensor in weights["eager"].items():
        torch.testing.assert_close(weights["compiled"][key], tensor, atol=1e-5, rtol=1e-4, msg=key)
