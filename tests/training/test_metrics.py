"""metrics.jsonl: the "setup" record of each start (kernels, torch.compile) beside the train and eval records,
what a restart keeps of them, and how it reads back (model card, plots): damaged records are skipped, never
half-believed."""

from __future__ import annotations

import io
import json

from megatron_zh.training.metrics import MetricsLogger, read_metrics

KERNELS = {"requested": "auto", "ops": {"layer_norm": "triton"}, "where": "cuda:0 bfloat16", "note": ""}


def train_record(iteration: int) -> dict:
    return {
        "iteration": iteration,
        "train_iters": 10,
        "consumed_samples": 4 * iteration,
        "loss": 9.0,
        "lr": 1e-4,
        "grad_norm": 1.0,
        "loss_scale": 1.0,
        "global_batch_size": 4,
        "step_time_ms": 1.0,
        "tokens_per_s": 1.0,
        "tflops": 0.0,
        "mfu": None,
        "eta_s": 0.0,
    }


def test_each_start_records_its_setup_and_a_restart_keeps_what_came_before_its_checkpoint(tmp_path):
    stdout = io.StringIO()
    first = MetricsLogger(True, str(tmp_path), None, 0, stdout=stdout)
    first.setup(0, KERNELS, False, "kernels: layer_norm=triton")
    for iteration in (1, 2, 3):
        first.train(train_record(iteration))
    first.close()
    assert "kernels: layer_norm=triton; torch.compile: off" in stdout.getvalue()
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"kind": "train", "iter')  # torn by a kill

    restarted = MetricsLogger(True, str(tmp_path), None, 2, stdout=io.StringIO())  # resumes from global_step2
    restarted.setup(2, {**KERNELS, "ops": {"layer_norm": "torch"}}, True, "kernels: layer_norm=torch")
    restarted.close()
    kinds = [(r["kind"], r["iteration"]) for r in map(json.loads, path.read_text().splitlines())]
    assert kinds == [("setup", 0), ("train", 1), ("train", 2), ("setup", 2)]
    setups = read_metrics(path, "setup")
    assert [(s["kernels"]["ops"], s["compile"]) for s in setups] == [
        ({"layer_norm": "triton"}, False),
        ({"layer_norm": "torch"}, True),
    ]


def test_a_torn_or_twice_keyed_record_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"kind": "train", "iteration": 1, "loss": 9.9}\n'
        '{"kind": "train", "iteration": 2, "loss": 9.1, "loss": 0.1}\n'  # which loss? neither
        '{"kind": "eval", "iteration": 2, "loss": 9.0}\n'
        '{"kind": "train", "iteration": 3, "lo'  # a run killed mid-write
    )
    assert read_metrics(path) == [{"kind": "train", "iteration": 1, "loss": 9.9}]
    assert [r["iteration"] for r in read_metrics(path, "eval")] == [2]
