"""Training metrics: throughput and MFU, and the three places they go (stdout, TensorBoard, metrics.jsonl).

metrics.jsonl holds one record per line, by "kind": "setup" once per start (what the run runs with:
the kernels its self-check chose, torch.compile), "train" per logged step, "eval" per validation.

MFU = achieved model FLOP/s per device / the device's peak. Model FLOPs per token come from
`megatron_zh.model.model_flops_per_token` (formula in its docstring: 3 x forward matmul FLOPs,
attention scores counted in full, recomputation not counted). Peaks are dense (no sparsity)
datasheet figures per precision; fp32 means plain FP32 (not TF32) CUDA-core throughput.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from megatron_zh.checkpoint.layout import METRICS_FILE
from megatron_zh.fileio import atomic_write, loads_json
from megatron_zh.log import get_logger
from megatron_zh.progress import format_duration

logger = get_logger(__name__)

# Dense peak TFLOP/s by precision; the first key contained in torch.cuda.get_device_name() wins.
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),  # SXM
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("GH200", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("H800", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("A800", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
]
CPU_FLOPS_PER_CYCLE = {"avx512f": 64, "avx2": 32}  # fp32, per core: 2 FMA ports x lanes x 2
CPU_FLOPS_PER_CYCLE_DEFAULT = 8


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_peak_tflops(threads: int) -> tuple[float, str]:
    """A stated estimate for a CPU rank: threads x clock x fp32 FLOPs per cycle (2 FMA units assumed)."""
    import psutil

    freq = psutil.cpu_freq()
    ghz = ((freq.max or freq.current) / 1000.0) if freq else 2.0
    flags = _cpu_flags()
    per_cycle = next((v for k, v in CPU_FLOPS_PER_CYCLE.items() if k in flags), CPU_FLOPS_PER_CYCLE_DEFAULT)
    tflops = threads * ghz * per_cycle / 1000.0
    return tflops, f"CPU estimate: {threads} thread(s) x {ghz:.2f} GHz x {per_cycle} FLOP/cycle"


def device_peak_tflops(precision: str, threads: int, override: float | None = None) -> tuple[float | None, str]:
    """Peak TFLOP/s of this rank's device for `precision`, and where the figure comes from."""
    if override is not None:
        return override, "--peak-tflops"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, peaks in GPU_PEAK_TFLOPS:
            if key in name:
                if precision in peaks:
                    return peaks[precision], f"{name} datasheet ({precision}, dense)"
                break
        return None, f"unknown peak for {name} in {precision}: pass --peak-tflops to get MFU"
    return cpu_peak_tflops(threads)


@dataclass(frozen=True)
class FlopsCounter:
    """Turns tokens/s into TFLOP/s per device and MFU."""

    flops_per_token: float
    world_size: int
    peak_tflops: float | None  # per device

    def tflops_per_device(self, tokens_per_s: float) -> float:
        return self.flops_per_token * tokens_per_s / self.world_size / 1e12

    def mfu(self, tokens_per_s: float) -> float | None:
        if not self.peak_tflops:
            return None
        return self.tflops_per_device(tokens_per_s) / self.peak_tflops


def format_train_line(r: dict[str, Any]) -> str:
    """One Megatron-style line per logged step."""
    parts = [
        f"iteration {r['iteration']:>8d}/{r['train_iters']:>8d}",
        f"consumed samples: {r['consumed_samples']:>10d}",
        f"elapsed time per iteration (ms): {r['step_time_ms']:.1f}",
        f"learning rate: {r['lr']:.3E}",
        f"global batch size: {r['global_batch_size']:>5d}",
        f"lm loss: {r['loss']:.6E}",
        f"loss scale: {r['loss_scale']:.1f}",
        f"grad norm: {r['grad_norm']:.3f}" if r["grad_norm"] is not None else "grad norm: n/a",
        f"tokens/s: {r['tokens_per_s']:.0f}",
        f"TFLOP/s/device: {r['tflops']:.2f}",
        f"MFU: {100 * r['mfu']:.1f}%" if r["mfu"] is not None else "MFU: n/a",
    ]
    if r.get("nonfinite_steps"):
        parts.append(f"non-finite steps: {r['nonfinite_steps']}")
    parts.append(f"ETA {format_duration(r['eta_s'])}")
    return " | ".join(parts)


def format_eval_line(r: dict[str, Any]) -> str:
    source = f" ({r['source']})" if r.get("source") else ""
    return (
        f"validation{source} at iteration {r['iteration']} | lm loss: {r['loss']:.6E} | "
        f"lm loss PPL: {r['ppl']:.6E} | tokens: {r['tokens']}"
    )


def eval_tag(record: dict[str, Any]) -> str:
    """How an evaluation record is named in TensorBoard and on the plot: "valid", or "valid/SOURCE"."""
    return f"{record['split']}/{record['source']}" if record.get("source") else record["split"]


def _keep_records_up_to(path: Path, iteration: int) -> None:
    """Drop records past `iteration` (logged by a run that died before its next checkpoint) and torn lines."""
    if not path.is_file():
        return
    kept = [r for r in _records(path) if isinstance(r.get("iteration"), int) and r["iteration"] <= iteration]
    with atomic_write(path) as f:
        f.write("".join(json.dumps(r) + "\n" for r in kept))


class MetricsLogger:
    """Rank 0's sink for metrics. On other ranks every method is a no-op."""

    def __init__(
        self,
        enabled: bool,
        save_dir: str | None,
        tensorboard_dir: str | None,
        start_iteration: int,
        stdout: TextIO = sys.stdout,
    ):
        self.enabled = enabled
        self.stdout = stdout
        self.jsonl: TextIO | None = None
        self.tensorboard = None
        if not enabled:
            return
        if save_dir is not None:
            path = Path(save_dir) / METRICS_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            _keep_records_up_to(path, start_iteration)
            self.jsonl = open(path, "a", encoding="utf-8")
        else:
            logger.warning("no --save directory: metrics.jsonl is not written")
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run logged past the checkpoint we resume from.
            self.tensorboard = SummaryWriter(
                tensorboard_dir, purge_step=start_iteration + 1 if start_iteration else None
            )

    def _write(self, record: dict[str, Any], line: str, scalars: dict[str, float | None]) -> None:
        if not self.enabled:
            return
        print(line, file=self.stdout, flush=True)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        if self.tensorboard is not None:
            for name, value in scalars.items():
                if value is not None and math.isfinite(value):
                    self.tensorboard.add_scalar(name, value, record["iteration"])
            self.tensorboard.flush()

    def train(self, record: dict[str, Any]) -> None:
        record = {"kind": "train", **record}
        scalars = {
            f"train/{k}": record[k]
            for k in ("loss", "lr", "grad_norm", "loss_scale", "tokens_per_s", "tflops", "mfu", "step_time_ms")
        }
        scalars["train/consumed_samples"] = record["consumed_samples"]
        self._write(record, format_train_line(record), scalars)

    def setup(self, iteration: int, kernels: dict[str, Any], compiled: bool, line: str) -> None:
        """What this start of the run runs with: the kernels (`KernelSelection.to_dict()`) and torch.compile."""
        record = {"kind": "setup", "iteration": iteration, "kernels": kernels, "compile": compiled}
        self._write(record, f"{line}; torch.compile: {'on' if compiled else 'off'}", {})

    def eval(self, record: dict[str, Any]) -> None:
        record = {"kind": "eval", **record}
        tag = eval_tag(record)
        self._write(record, format_eval_line(record), {f"{tag}/loss": record["loss"], f"{tag}/ppl": record["ppl"]})

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stdout, flush=True)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def _records(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl, in file order; a torn line, or one with a key written twice, is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = loads_json(line)
        except json.JSONDecodeError:  # also a key written twice: the record is damaged
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_metrics(path: str | os.PathLike, kind: str = "train") -> list[dict[str, Any]]:
    """The records of one kind ("setup" | "train" | "eval") from a metrics.jsonl, in file order."""
    path = Path(path)
    if not path.is_file():
        return []
    return [record for record in _records(path) if record.get("kind") == kind]
