"""pretrain_gpt.py with every host read of a tensor's value counted, per training step and per call site.

On a GPU, reading a device tensor's value on the host (.item(), .tolist(), bool(t), float(t), .cpu(),
.numpy(), .nonzero(), torch.equal ...) makes the host wait for all the work queued before it: a sync. On
CPU ranks no such wait exists, but the calls are the same, so counting them here counts the syncs a GPU
run would make. A torch function mode (torch.overrides.TorchFunctionMode) sees each such call on any
tensor; the call is charged to the innermost frame outside torch itself (megatron_zh, deepspeed, ...) and
to the current training step (the number of loop.train_step calls so far; 0 before the first). Not
counted: .to("cpu") (on CPU ranks it cannot be told from the host-to-device copies of the batches).

    deepspeed --num_gpus 2 tests/support/count_syncs_pretrain.py --ds_config ... (pretrain_gpt.py's flags)

Each rank writes {step: {site: count}} to $SYNC_COUNTS_DIR/rank<r>.json when the run ends.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from megatron_zh.cli import run_cli
from megatron_zh.training import loop

HOST_READS = {
    "item",
    "tolist",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__array__",
    "cpu",
    "numpy",
    "nonzero",
    "equal",
    "allclose",
    "is_nonzero",
}
TORCH_DIR = str(Path(torch.__file__).resolve().parent)
THIS_FILE = str(Path(__file__).resolve())


class CountHostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.counts: dict[int, Counter[str]] = defaultdict(Counter)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            self.counts[self.step][f"{func.__name__} in {call_site()}"] += 1
        return func(*args, **(kwargs or {}))


def call_site() -> str:
    """The innermost frame outside torch and this file: 'megatron_zh/training/loop.py:123 (read)'."""
    frame = sys._getframe(2)
    while frame is not None:
        path = str(Path(frame.f_code.co_filename).resolve())
        if not path.startswith(TORCH_DIR) and path != THIS_FILE:
            parts = Path(path).parts
            for package in ("megatron_zh", "deepspeed"):
                if package in parts:
                    path = "/".join(parts[len(parts) - parts[::-1].index(package) - 1 :])
                    break
            return f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "torch"


def main(argv=None) -> int:
    from megatron_zh.training.pretrain import main as pretrain_main

    counter = CountHostReads()
    train_step = loop.train_step

    def counted_train_step(ctx):
        counter.step += 1
        return train_step(ctx)

    loop.train_step = counted_train_step
    with counter:
        status = pretrain_main(argv)
    out = Path(os.environ["SYNC_COUNTS_DIR"]) / f"rank{os.environ.get('RANK', '0')}.json"
    out.write_text(json.dumps({step: dict(sites) for step, sites in counter.counts.items()}, indent=1))
    return status


if __name__ == "__main__":
    run_cli(main)
