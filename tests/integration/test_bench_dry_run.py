"""The benchmark scripts run end to end on CPU (timings are not checked: benchmarks are not tests).

bench_kernels.py is meant for a GPU; its --interpret mode runs the same code path under Triton's
interpreter at tiny shapes, so the script is known to work before anyone spends GPU time on it.
"""

from __future__ import annotations

import os
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
