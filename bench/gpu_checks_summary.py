"""The summary table at the end of bench/gpu_checks.sh: one block per part, from the logs it left.

    python bench/gpu_checks_summary.py LOGS_DIR

LOGS_DIR/parts.tsv holds a line per part (name, exit status, seconds, limit); LOGS_DIR/NAME.log its
output, whose last `summary: {json}` line holds its figures. A part that timed out or failed shows
its status and no figures; nothing here runs anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def last_summary(log: Path) -> dict | None:
    if not log.is_file():
        return None
    lines = [
        line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.startswith("summary: ")
    ]
    try:
        return json.loads(lines[-1].removeprefix("summary: ")) if lines else None
    except json.JSONDecodeError:
        return None


def status_text(code: int) -> str:
    return {0: "ok", 124: "TIMEOUT", 137: "KILLED"}.get(code, f"FAILED ({code})")


def selfcheck_lines(s: dict) -> list[str]:
    failed = ", ".join(s["failed"]) or "none"
    return [f"{s['checks']} checks on {s['device']}; failed: {failed}; worst passing score {s['worst_passing_score']}"]


def kernels_lines(s: dict) -> list[str]:
    lines = [f"copy bandwidth {s['copy_bandwidth_gbs']:.0f} GB/s; fwd+bwd, ours vs torch.F / eager, rel diff"]
    for r in s["fwd_bwd"]:
        versus_f = "-" if r["vs_F"] is None else f"{r['vs_F']:.2f}x"
        lines.append(
            f"{r['op']:<16} {r['shape']:<7} {r['ours']:>9.4g} {r['unit']:<7} {versus_f:>6} F "
            f"{r['vs_eager']:>6.2f}x eager  diff {r['rel_diff']}"
        )
    return lines


def train_lines(s: dict) -> list[str]:
    lines = [f"{s['model']} {s['precision']} seq {s['seq_length']} x mb {s['micro_batch_size']} on {s['device']}"]
    ratios = next((v for k, v in s.items() if k.startswith("speed_ratio_over_")), {})
    for name, tokens in s["tokens_per_s_median"].items():
        mfu = s["mfu"][name]
        ratio = f"  {ratios[name]:.3f}x" if name in ratios else ""
        memory = s["peak_memory_gib"][name]
        above = s["peak_memory_above_chunk_start_gib"][name]
        memory_text = "" if memory is None else f"  peak {memory} GiB ({above} above chunk start)"
        lines.append(
            f"{name:<10} {tokens:>12,.0f} tokens/s  MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}"
            f"{ratio}{memory_text}"
        )
    return lines


def run_lines(s: dict) -> list[str]:
    kernels = ", ".join(f"{op}={backend}" for op, backend in s["kernels"].items())
    mfu = "n/a" if s["mfu_median"] is None else f"{100 * s['mfu_median']:.1f}%"
    fell = "fell" if s["loss_fell"] else "DID NOT FALL"
    return [
        f"loss {s['first_loss']} -> {s['last5_loss']} over {s['steps']} steps ({fell});"
        f" {s['tokens_per_s_median']:,.0f} tokens/s, MFU {mfu}; {s['data']}",
        f"kernels {kernels}; self-check scores {s['self_check']}; compile {s['compile']}",
    ]


FORMATS = {"selfcheck": selfcheck_lines, "kernels": kernels_lines, "memory": train_lines, "run": run_lines}


def main(argv: list[str]) -> int:
    logs = Path(argv[0]) if argv else Path("runs/gpu_checks")
    parts = [line.split("\t") for line in (logs / "parts.tsv").read_text(encoding="utf-8").splitlines() if line]
    print("=" * 100)
    print(f"{'part':<14}{'status':<12}{'time':>8}  result")
    print("-" * 100)
    for name, code, seconds, limit in parts:
        summary = last_summary(logs / f"{name}.log")
        lines = ["no figures (see its log)"]
        if summary is not None:
            lines = FORMATS.get(name, train_lines)(summary)
        print(f"{name:<14}{status_text(int(code)):<12}{f'{seconds}/{limit}s':>8}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<36}{line}")
    print("=" * 100)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
