"""The Triton kernels compile for real GPUs (sm_80 A100, sm_90 H100/H200), checked on this CPU-only machine.

The other kernel tests run them under Triton's interpreter, which checks the maths but not
GPU compilation; this compiles every kernel ahead of time with Triton's compiler and the ptxas
shipped in the triton wheel (no driver, no GPU), as `compile_check` does for all configs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


@pytest.mark.integration
def test_every_kernel_compiles_for_sm80_and_sm90(repo_root):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_zh.ops.kernels.compile_check",
            "--arch",
            "80,90",
            "--dtypes",
            "bf16,fp32",
            "--first-config-only",
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    compiled = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    # per arch: 2 dtypes x (4 attention kernels x dropout on/off + 2 softmax + 3 layer norm) + the mask kernel
    assert len(compiled) == 2 * 27 and "0 failure(s)" in result.stdout, result.stdout
    for arch in (80, 90):
        assert sum(f" sm_{arch} " in line for line in compiled) == 27, arch
    for kernel in (
        "_attn_fwd_kernel",
        "_attn_bwd_delta_kernel",
        "_attn_bwd_dkdv_kernel",
        "_attn_bwd_dq_kernel",
        "_softmax_fwd_kernel",
        "_softmax_bwd_kernel",
        "_layer_norm_fwd_kernel",
        "_layer_norm_bwd_dx_kernel",
        "_column_sum_kernel",
        "_keep_mask_kernel",
    ):
        assert f" {kernel} " in result.stdout, kernel
