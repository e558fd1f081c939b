"""The benchmark scripts run end to end on CPU (timings are not checked: benchmarks are not tests), and so does
every part of the GPU acceptance run (bench/gpu_checks.sh --cpu-dry-run).

bench_kernels.py is meant for a GPU; its --interpret mode runs the same code path under Triton's
interpreter at tiny shapes, so the script is known to work before anyone spends GPU time on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys


def run(repo_root, *args: str, interpret_env: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if not interpret_env:
        env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, *args], cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)


def test_bench_kernels_dry_run_under_the_interpreter(repo_root):
    result = run(repo_root, "bench/bench_kernels.py", "--interpret", "--shapes", "stage1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [
        line
        for line in result.stdout.splitlines()
        if line.split()[:1] and line.split()[0] in ("layer_norm", "softmax", "attention")
    ]
    assert len(rows) == 10, result.stdout  # 3 passes x 3 ops + attention with dropout
    # Every kernel agreed with its PyTorch baseline (last column: relative difference).
    diffs = [float(line.split()[-1]) for line in rows if line.split()[-1] != "nan"]
    assert len(diffs) == 9 and max(diffs) < 0.05, result.stdout


def test_bench_kernels_says_clearly_that_no_gpu_is_present(repo_root):
    result = run(repo_root, "bench/bench_kernels.py", interpret_env=False)
    assert result.returncode == 2
    assert "no CUDA GPU is present, so nothing was measured" in result.stderr


def test_bench_model_cpu_runs(repo_root):
    result = run(
        repo_root,
        "bench/bench_model_cpu.py",
        "--preset",
        "gpt2-tiny",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "2",
        "--seq-length",
        "16",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio megatron_zh / transformers" in result.stdout


def test_bench_index_runs(repo_root):
    """All three parts at a small size: index build vs megatron-core, read throughput, peak memory."""
    result = run(
        repo_root,
        "bench/bench_index.py",
        "--documents",
        "100000",
        "--repeats",
        "1",
        "--memory-documents",
        "100000",
        "--memory-tokens",
        "2e7",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "=> worst ratio ours/megatron-core:" in result.stdout
    assert "speed-up over megatron-core" in result.stdout and "peak while building" in result.stdout


GPU_CHECK_PARTS = ["selfcheck", "kernels", "train-stage1", "train-stage2", "memory", "run"]


def test_gpu_checks_cpu_dry_run_runs_every_part_and_ends_with_the_table(repo_root, tmp_path):
    """bench/gpu_checks.sh --cpu-dry-run: every part of the GPU acceptance run at tiny shapes on CPU, without the
    corpus (as on a bare GPU machine: the throughput parts use random tokens, the short run a synthetic corpus)."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env["MEGATRON_ZH_DATA_DIR"] = str(tmp_path / "no-corpus-here")
    result = subprocess.run(
        ["bash", "bench/gpu_checks.sh", "--cpu-dry-run"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    parts = [line.split("\t") for line in (tmp_path / "parts.tsv").read_text().splitlines()]
    run_summary = json.loads(
        next(line for line in (tmp_path / "run.log").read_text().splitlines()[::-1] if line.startswith("summary: "))[9:]
    )
    shutil.rmtree(run_summary["save"])  # the short run's checkpoint, made by this test
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert [(name, status) for name, status, *_ in parts] == [(name, "0") for name in GPU_CHECK_PARTS]
    table = result.stdout[result.stdout.rindex("\npart ") :]  # the summary table, from its header
    for name in GPU_CHECK_PARTS:
        assert re.search(rf"^{name}\s+ok\s", table, re.M), table
    assert "no figures" not in table
    assert len(re.findall(r"^\s+compiled\s.*tokens/s", table, re.M)) == 2  # eager vs --compile, both stages
    assert re.search(r"^\s+logits\s.*tokens/s", table, re.M) and re.search(r"^\s+fused\s.*tokens/s", table, re.M)
    assert run_summary["loss_fell"] and run_summary["data"].startswith("synthetic corpus")
    assert "failed: none" in table  # the self-check of every kernel passed under the interpreter
