"""The kernel self-check and `select_kernels`: healthy kernels pass with a margin, broken ones (replaced
launchers: raising, slightly wrong, NaN; forward or backward) are caught, "auto" falls back per op with one
WARNING, "triton" stops with one line, and the check leaves the run's RNG alone. Kernels run under Triton's
interpreter (conftest sets TRITON_INTERPRET=1)."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from megatron_zh import ops
from megatron_zh.model import GPT2Config, kernel_uses
from megatron_zh.ops import KernelChoice, KernelUse
from megatron_zh.ops.kernels import attention, layer_norm, softmax

pytest.importorskip("triton")

TINY = GPT2Config.from_preset("gpt2-tiny")  # hidden 128, 4 heads of 32, attention dropout 0.1
USES = kernel_uses(TINY, 1, 32)  # layer norm; attention without and with dropout
SOFTMAX_USE = KernelUse("scaled_causal_softmax", (1, 4, 32, 32))


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def break_launcher(monkeypatch, module, name: str, how: str) -> None:
    real = getattr(module, name)

    def broken(*args, **kwargs):
        if how == "raise":
            raise RuntimeError("no kernel image is available for execution on the device")
        result = real(*args, **kwargs)
        first, *rest = result if isinstance(result, tuple) else (result,)
        if how == "nan":
            first = torch.full_like(first, float("nan"))
        elif how == "5%":
            first = first * 1.05
        elif how == "one element":
            first = first.clone()
            first.view(-1)[first.numel() // 2] += 0.5
        return (first, *rest) if isinstance(result, tuple) else first

    monkeypatch.setattr(module, name, broken)


def test_the_model_lists_the_kernels_a_step_runs():
    assert USES == [
        KernelUse("layer_norm", (1, 32, 128)),
        KernelUse("causal_attention", (1, 4, 32, 32)),
        KernelUse("causal_attention", (1, 4, 32, 32), 0.1),
    ]
    softmax_impl = GPT2Config.from_preset("gpt2-tiny", attention_impl="softmax", attention_dropout=0.0)
    assert [u.op for u in kernel_uses(softmax_impl, 2, 16)] == ["layer_norm", "scaled_causal_softmax"]
    assert [u.op for u in kernel_uses(GPT2Config.from_preset("gpt2-tiny", attention_impl="torch"), 2, 16)] == [
        "layer_norm"
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_healthy_kernels_pass_with_a_margin_and_leave_the_rng_alone(dtype, caplog):
    rng = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="megatron_zh"):
        selection = ops.select_kernels("auto", [*USES, SOFTMAX_USE], "cpu", dtype)
    assert torch.equal(torch.get_rng_state(), rng), "the self-check drew from the run's CPU generator"
    assert selection.choice == KernelChoice.uniform("triton")
    assert not warnings_in(caplog)
    scores = [r.score for checks in selection.results.values() for r in checks]
    assert len(scores) == 4 and max(scores) < (0.1 if dtype == torch.float32 else 0.6), selection.summary()
    record = selection.to_dict()
    assert record["ops"] == {"layer_norm": "triton", "causal_attention": "triton", "scaled_causal_softmax": "triton"}
    assert all(check["ok"] for check in record["self_check"].values())
    assert selection.summary().startswith("kernels: layer_norm=triton, causal_attention=triton, ")


BREAKAGES = [
    (layer_norm, "forward", "5%", USES[0]),
    (layer_norm, "backward", "one element", USES[0]),
    (layer_norm, "backward", "nan", USES[0]),
    (attention, "forward", "raise", USES[1]),
    (attention, "backward", "5%", USES[2]),  # with dropout: the other compiled variant
    (softmax, "forward", "one element", SOFTMAX_USE),
    (softmax, "backward", "nan", SOFTMAX_USE),
]


@pytest.mark.parametrize(
    "module, launcher, how, use",
    BREAKAGES,
    ids=[f"{m.__name__.rsplit('.', 1)[-1]}.{name}-{how}" for m, name, how, _ in BREAKAGES],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_a_broken_kernel_is_caught(monkeypatch, module, launcher, how, use, dtype):
    break_launcher(monkeypatch, module, launcher, how)
    result = ops.self_check(use, "cpu", dtype)
    assert not result.ok and result.score > 1, result
    assert "\n" not in result.detail
    if how == "raise":
        assert math.isinf(result.score) and "no kernel image is available" in result.detail
    elif how == "nan":
        assert "non-finite values" in result.detail


def test_auto_runs_pytorch_code_for_the_failing_op_only_and_warns_once(monkeypatch, caplog):
    break_launcher(monkeypatch, attention, "backward", "5%")
    with caplog.at_level(logging.INFO, logger="megatron_zh"):
        selection = ops.select_kernels("auto", USES, "cpu", torch.float32)
    assert selection.choice == KernelChoice("triton", "torch", "torch")
    (warning,) = warnings_in(caplog)
    assert warning.startswith(
        "kernel self-check: causal_attention (Triton) failed on cpu float32 (Triton interpreter) "
    )
    assert "at shape [1, 4, 32, 32]: dq: max |diff|" in warning
    assert warning.endswith("; causal_attention runs its PyTorch implementation for this run")
    assert selection.to_dict()["ops"] == {"layer_norm": "triton", "causal_attention": "torch"}
    assert float(selection.summary().rsplit("causal_attention ", 1)[1].rstrip(")")) > 1


def test_triton_stops_with_one_line_naming_the_op_and_the_error(monkeypatch):
    break_launcher(monkeypatch, layer_norm, "forward", "raise")
    with pytest.raises(ops.KernelCheckError) as error:
        ops.select_kernels("triton", USES, "cpu", torch.float32)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("kernel self-check: layer_norm (Triton) failed on cpu float32 (Triton interpreter)")
    assert "RuntimeError: no kernel image is available" in message and "--kernels auto" in message


def test_torch_checks_nothing(monkeypatch):
    break_launcher(monkeypatch, layer_norm, "forward", "raise")
    selection = ops.select_kernels("torch", USES, "cpu", torch.float32)
    assert selection.choice == KernelChoice.uniform("torch") and not selection.results
    assert selection.summary() == "kernels: layer_norm=torch, causal_attention=torch (--kernels torch)"


def test_ranks_agree_on_an_op_that_failed_elsewhere():
    results = ops.check_kernels(USES, "cpu", torch.float32)
    agreed = ops.agree(results, {"layer_norm": 1, "causal_attention": 0}, world_size=2)
    assert not agreed["layer_norm"][0].ok and "failed on 1 of 2 ranks" in agreed["layer_norm"][0].detail
    assert all(r.ok for r in agreed["causal_attention"])
    selection = ops.select_kernels("auto", USES, "cpu", torch.float32, results=agreed)
    assert selection.choice == KernelChoice("torch", "triton", "torch")


@pytest.mark.integration
def test_a_cpu_only_machine_never_launches_triton(repo_root):
    """Without TRITON_INTERPRET: CPU tensors take the PyTorch path and asking for Triton is a clear error, for
    an op and for a run (--kernels); --kernels auto settles on PyTorch code without importing Triton."""
    code = (
        "import sys, torch\n"
        "from megatron_zh import ops\n"
        "from megatron_zh.model import GPT2Config, kernel_uses\n"
        "uses = kernel_uses(GPT2Config.from_preset('gpt2-tiny'), 1, 32)\n"
        "print(ops.select_kernels('auto', uses, 'cpu', torch.float32).summary())\n"
        "assert 'triton' not in sys.modules, 'deciding imported Triton'\n"
        "try:\n    ops.select_kernels('triton', uses, 'cpu', torch.float32)\n"
        "except ops.KernelCheckError as e:\n    print(e)\n"
        "import megatron_zh.ops.kernels as k\n"
        "x = torch.randn(2, 4, 8, 8)\n"
        "assert not k.INTERPRETED and not ops.triton_can_run(x)\n"
        "assert ops.resolve_backend('auto', 'op', x) == 'torch'\n"
        "ops.causal_attention(x, x, x)\n"
        "try:\n    ops.causal_attention(x, x, x, backend='triton')\nexcept RuntimeError as e:\n    print(e)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    auto, run_error, op_error = result.stdout.splitlines()
    assert auto.startswith("kernels: layer_norm=torch, causal_attention=torch (PyTorch code: the Triton kernels")
    assert run_error.startswith("--kernels triton, but the Triton kernels run on CUDA devices")
    assert "not on cpu" in run_error
    assert "backend='triton' needs CUDA tensors" in op_error
