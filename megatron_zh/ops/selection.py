"""`--kernels auto|triton|torch` -> the backend of every op for a whole run, decided once before it starts.

  auto    the Triton kernels wherever they can run (a CUDA device; the CPU only under
          TRITON_INTERPRET=1, Triton's interpreter, which is how tests reach this path), each op
          first passing its self-check on the run's device, dtype and shapes; an op that fails
          gets one WARNING (the op, the error or the largest difference) and runs its PyTorch
          implementation for the whole run, the others keep Triton. Elsewhere, PyTorch code.
  triton  the same check, but a failure, or a device the kernels cannot run on, is an error
  torch   PyTorch code for every op; nothing is checked

The result is a value (`KernelSelection`, holding the model's frozen `KernelChoice`), not process
state: the caller hands the choice to the model and records the rest. With several ranks, each
checks its own device and `agree` makes an op that failed anywhere fail everywhere, so every rank
runs the same code. A test breaks a kernel by replacing its launcher in `megatron_zh.ops.kernels`
before the run starts; nothing here knows about tests.

Limit: a device-side fault (an illegal address on a GPU) poisons the CUDA context, and no fallback
in this process can recover from it: such a failure ends the run with PyTorch's error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from megatron_zh.errors import MegatronZhError
from megatron_zh.log import get_logger
from megatron_zh.ops.dispatch import BACKENDS, OPS, Backend, KernelChoice, OpName, kernels_interpreted, triton_runs_on
from megatron_zh.ops.self_check import CheckResult, KernelUse, check_kernels

logger = get_logger(__name__)

Results = Mapping[OpName, list[CheckResult]]


class KernelCheckError(MegatronZhError):
    """--kernels triton where the Triton kernels cannot run, or where one of them failed its self-check."""


@dataclass(frozen=True)
class KernelSelection:
    """What `select_kernels` decided and why: the model's choice, and the record a run keeps of it."""

    requested: Backend
    choice: KernelChoice
    ops: tuple[OpName, ...]  # the ops the model calls, in OPS order
    where: str  # "cuda:0 bfloat16", "cpu float32 (Triton interpreter)"
    results: Mapping[OpName, list[CheckResult]] = field(default_factory=dict)  # empty: nothing was checked
    note: str = ""  # why nothing was checked

    @property
    def check_seconds(self) -> float:
        return sum(r.seconds for checks in self.results.values() for r in checks)

    def summary(self) -> str:
        """The one INFO line: each op's backend, then the self-check's margins (score <= 1 passes)."""
        line = f"kernels: {self.choice.describe(self.ops) or 'no fused ops in this model'}"
        if not self.results:
            return f"{line} ({self.note})" if self.note else line
        scores = ", ".join(f"{op} {_worst(checks).score:.2g}" for op, checks in self.results.items())
        return (
            f"{line} (self-check on {self.where} in {self.check_seconds:.1f} s; "
            f"error as a share of tolerance, 1 = limit: {scores})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The record a run keeps (config.json, metrics.jsonl, the model card read it)."""
        return {
            "requested": self.requested,
            "ops": {op: getattr(self.choice, op) for op in self.ops},
            "where": self.where,
            "note": self.note,
            "self_check": {
                op: {
                    "ok": all(r.ok for r in checks),
                    "score": None if math.isinf(_worst(checks).score) else round(_worst(checks).score, 4),
                    "detail": _worst(checks).detail,
                    "seconds": round(sum(r.seconds for r in checks), 3),
                }
                for op, checks in self.results.items()
            },
        }


def _worst(checks: list[CheckResult]) -> CheckResult:
    failed = [r for r in checks if not r.ok]
    return failed[0] if failed else max(checks, key=lambda r: r.score)


def describe_where(device: torch.device | str, dtype: torch.dtype) -> str:
    device = torch.device(device)
    where = f"{device} {str(dtype).removeprefix('torch.')}"
    return f"{where} (Triton interpreter)" if device.type != "cuda" and kernels_interpreted() else where


def used_ops(uses: Iterable[KernelUse]) -> tuple[OpName, ...]:
    called = {use.op for use in uses}
    return tuple(op for op in OPS if op in called)


def agree(results: Results, failing_ranks: Mapping[OpName, int], world_size: int) -> dict[OpName, list[CheckResult]]:
    """This rank's results, with every op that failed on some rank failed here too (`failing_ranks`:
    how many ranks saw each op fail), so that all ranks choose alike."""
    agreed: dict[OpName, list[CheckResult]] = {}
    for op, checks in results.items():
        failures = failing_ranks.get(op, 0)
        if failures and all(r.ok for r in checks):
            detail = f"passed on this rank, failed on {failures} of {world_size} ranks (their own lines say why)"
            checks = [replace(checks[0], ok=False, score=math.inf, detail=detail), *checks[1:]]
        agreed[op] = list(checks)
    return agreed


def select_kernels(
    requested: Backend,
    uses: Iterable[KernelUse],
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    results: Results | None = None,
) -> KernelSelection:
    """The run's kernels for `--kernels requested` (module docstring). `results`: `check_kernels`'s, already
    agreed across ranks; checked here when None. Raises KernelCheckError for --kernels triton."""
    if requested not in BACKENDS:
        raise KernelCheckError(f"--kernels must be one of {', '.join(BACKENDS)}, got {requested!r}")
    uses = list(uses)
    ops, where = used_ops(uses), describe_where(device, dtype)
    torch_everywhere = KernelChoice.uniform("torch")
    if requested == "torch" or not uses:
        note = "--kernels torch" if requested == "torch" else "nothing to check"
        return KernelSelection(requested, torch_everywhere, ops, where, note=note)
    if not triton_runs_on(device):
        why = f"the Triton kernels run on CUDA devices (on CPU only under TRITON_INTERPRET=1), not on {device}"
        if requested == "triton":
            raise KernelCheckError(f"--kernels triton, but {why}; use --kernels auto or --kernels torch")
        return KernelSelection(requested, torch_everywhere, ops, where, note=f"PyTorch code: {why}")
    if results is None:
        results = check_kernels(uses, device, dtype)
    chosen: dict[str, Backend] = {op: "torch" for op in OPS}
    for op, checks in results.items():
        if all(r.ok for r in checks):
            chosen[op] = "triton"
            continue
        failed = _worst(checks)
        what = f"kernel self-check: {op} (Triton) failed on {where} at {failed.use.describe()}: {failed.detail}"
        if requested == "triton":
            raise KernelCheckError(
                f"{what}; --kernels triton stops here (--kernels auto runs this op's PyTorch implementation instead)"
            )
        logger.warning("%s; %s runs its PyTorch implementation for this run", what, op)
    return KernelSelection(requested, KernelChoice(**chosen), ops, where, dict(results))
