"""The start-up kernel self-check in real runs on CPU, with the Triton kernels under the interpreter and one of
them broken by a test-only runner (tests/support/broken_kernel_pretrain.py replaces a launcher, then runs
pretrain_gpt.py unchanged): `--kernels auto` falls back for that op on every rank, trains and says so in the log,
config.json and metrics.jsonl; `--kernels triton` stops in one line."""

from __future__ import annotations

import json
import math
import re

import pytest
from repo_paths import SUPPORT
from training_runs import SMALL_STEPS, latest, pretrain_args, run

from megatron_zh.training.metrics import read_metrics

pytestmark = pytest.mark.integration

SHORT = dict(SMALL_STEPS, train_iters=3)


def broken_run_args(dataset: dict, save, **flags) -> list[str]:
    args = pretrain_args(dataset, save, **SHORT, **flags)
    args[0] = str(SUPPORT / "broken_kernel_pretrain.py")
    return args


def test_a_kernel_failing_on_one_rank_runs_pytorch_code_on_every_rank(zh_text_document, tmp_path):
    save = tmp_path / "ckpt"
    env = {"TRITON_INTERPRET": "1", "BROKEN_KERNEL": "layer_norm.backward=wrong", "BROKEN_KERNEL_RANK": "1"}
    output = run(broken_run_args(zh_text_document, save), env=env, timeout=600)
    assert "Traceback" not in output
    warnings = [line for line in output.splitlines() if "[WARNING]" in line and "kernel self-check" in line]
    assert len(warnings) == 2, output[-4000:]  # one per rank
    rank1 = next(line for line in warnings if "[rank 1]" in line)
    rank0 = next(line for line in warnings if "[rank 0]" in line)
    where = "on cpu float32 (Triton interpreter) at shape [2, 32, 128]"
    assert f"kernel self-check: layer_norm (Triton) failed {where}: dx: max |diff|" in rank1
    assert "layer_norm (Triton) failed" in rank0 and "passed on this rank, failed on 1 of 2 ranks" in rank0
    assert all(line.endswith("layer_norm runs its PyTorch implementation for this run") for line in warnings)
    assert re.search(r"^kernels: layer_norm=torch, causal_attention=triton \(self-check on cpu float32", output, re.M)

    record = json.loads((save / "config.json").read_text())["kernels"]
    assert record["requested"] == "auto"
    assert record["ops"] == {"layer_norm": "torch", "causal_attention": "triton"}
    assert not record["self_check"]["layer_norm"]["ok"] and record["self_check"]["causal_attention"]["ok"]
    (setup,) = read_metrics(save / "metrics.jsonl", "setup")
    assert setup["iteration"] == 0 and setup["kernels"] == record and setup["compile"] is False
    losses = [r["loss"] for r in read_metrics(save / "metrics.jsonl")]
    assert len(losses) == SHORT["train_iters"] and all(math.isfinite(loss) for loss in losses)
    assert latest(save) == "global_step3"


def test_kernels_triton_stops_in_one_line_before_anything_is_written(zh_text_document, tmp_path):
    save = tmp_path / "ckpt"
    env = {"TRITON_INTERPRET": "1", "BROKEN_KERNEL": "attention.forward=raise"}
    output = run(broken_run_args(zh_text_document, save, kernels="triton"), ranks=None, env=env, expect_rc=2)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: kernel self-check: causal_attention (Triton) failed on cpu float32 (Triton interpreter) at shape "
        "[2, 4, 32, 32]: RuntimeError: attention.forward broken on purpose by "
        f"{SUPPORT / 'broken_kernel_pretrain.py'}; --kernels triton stops here (--kernels auto runs this op's "
        "PyTorch implementation instead)"
    ], output[-3000:]
    assert "Traceback" not in output
    assert not (save / "config.json").exists() and latest(save) is None
