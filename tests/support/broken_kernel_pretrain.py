"""pretrain_gpt.py with one Triton launcher broken, for tests/integration/test_kernel_check.py.

BROKEN_KERNEL="MODULE.FUNCTION=HOW" replaces `megatron_zh.ops.kernels.MODULE.FUNCTION` (a launcher:
layer_norm.forward, attention.backward, softmax.forward, ...) before the run starts; the custom ops
look their launcher up when they run, so the real entry point then calls the broken one. HOW:

    raise   the launcher raises RuntimeError, as a kernel that fails to compile or launch
    wrong   its first output comes back * 1.01 + 0.01, as a kernel with a small systematic error
    nan     its first output comes back all NaN

BROKEN_KERNEL_RANK=R breaks it on global rank R only. Everything else is the real run (the
kernels need TRITON_INTERPRET=1 on CPU).

    deepspeed --num_gpus 2 tests/support/broken_kernel_pretrain.py --ds_config ... (BROKEN_KERNEL in the environment)
"""

import functools
import importlib
import os

import torch

from megatron_zh.cli import run_cli


def _break(result, how: str):
    first, *rest = result if isinstance(result, tuple) else (result,)
    first = first * 1.01 + 0.01 if how == "wrong" else torch.full_like(first, float("nan"))
    return (first, *rest) if isinstance(result, tuple) else first


def break_launcher(spec: str) -> None:
    target, _, how = spec.partition("=")
    module_name, _, function_name = target.rpartition(".")
    module = importlib.import_module(f"megatron_zh.ops.kernels.{module_name}")
    real = getattr(module, function_name)
    if how not in ("raise", "wrong", "nan"):
        raise SystemExit(f"BROKEN_KERNEL: unknown breakage {how!r} (raise, wrong, nan)")

    @functools.wraps(real)
    def broken(*args, **kwargs):
        if how == "raise":
            raise RuntimeError(f"{target} broken on purpose by {__file__}")
        return _break(real(*args, **kwargs), how)

    setattr(module, function_name, broken)


if __name__ == "__main__":
    rank = os.environ.get("BROKEN_KERNEL_RANK")
    if os.environ.get("BROKEN_KERNEL") and rank in (None, os.environ.get("RANK", "0")):
        break_launcher(os.environ["BROKEN_KERNEL"])
    from megatron_zh.training.pretrain import main

    run_cli(main)
