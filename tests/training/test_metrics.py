"""metrics.jsonl as read back (model card, plots): damaged records are skipped, never half-believed."""

from __future__ import annotations

from megatron_zh.training.metrics import read_metrics


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
