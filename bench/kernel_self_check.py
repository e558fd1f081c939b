"""The start-up kernel self-check of a training run, at both stage shapes of gpt2-distil, on this GPU.

For each stage (1: micro-batch 64 x seq 128; 2: micro-batch 16 x seq 1024) and each attention path
asked for (--impls: flash attention, the default; the fused softmax of attention_impl="softmax") it
runs what `--kernels auto` runs before the first step (megatron_zh.ops.select_kernels) and prints,
per kernel use, whether it passed, its score (the worst error as a share of its tolerance: 1 is the
limit, so this is the margin a GPU's rounding leaves) and how long it took (the first use of a kernel
includes its compile and autotuning). An op that fails is what a run would fall back on, with the
WARNING it would log.

    python bench/kernel_self_check.py                   # on a CUDA GPU, bf16 (about a minute)
    python bench/kernel_self_check.py --dtypes bf16,fp32 --impls flash,softmax
    python bench/kernel_self_check.py --cpu-dry-run     # CPU, Triton's interpreter, gpt2-tiny shapes

Prints a last line `summary: {json}` (bench/gpu_checks.sh collects it). Exit status 0 also when an op
fails its check (that is a result); 2 without a GPU (and without --cpu-dry-run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = {"stage1": (64, 128), "stage2": (16, 1024)}  # micro-batch, seq
DRY_RUN_STAGES = {"stage1": (2, 32), "stage2": (1, 64)}
DTYPES = ("bf16", "fp32", "fp16")
NO_GPU_EXIT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="bf16", help=f"comma-separated subset of {', '.join(DTYPES)}")
    p.add_argument("--impls", default="flash", help="comma-separated subset of flash, softmax")
    p.add_argument("--cpu-dry-run", action="store_true", help="CPU, TRITON_INTERPRET=1, gpt2-tiny at tiny shapes")
    args = p.parse_args(argv)
    args.impls = [i for i in args.impls.split(",") if i]
    if not args.impls or set(args.impls) - {"flash", "softmax"}:
        p.error(f"--impls: a subset of flash, softmax, got {args.impls}")
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = sorted(set(args.dtypes) - set(DTYPES))
    if unknown:
        p.error(f"unknown dtype(s) {unknown}; choose from {DTYPES}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernels
    import torch

    from megatron_zh import ops
    from megatron_zh.log import setup_logging
    from megatron_zh.model import GPT2Config, kernel_uses
    from megatron_zh.training.kernel_check import DTYPES as TORCH_DTYPES

    setup_logging()  # the WARNING of a failing op, as a run logs it
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("kernel_self_check.py: no CUDA GPU, nothing checked (--cpu-dry-run checks the script)", file=sys.stderr)
        return NO_GPU_EXIT
    device = torch.device("cpu") if args.cpu_dry_run else torch.device("cuda", torch.cuda.current_device())
    preset, stages = ("gpt2-tiny", DRY_RUN_STAGES) if args.cpu_dry_run else ("gpt2-distil", STAGES)
    name = "CPU, Triton interpreter (dry run)" if args.cpu_dry_run else torch.cuda.get_device_name()
    print(f"device: {name}; torch {torch.__version__}; model {preset}")
    print(f"{'dtype':<6}{'stage':<8}{'impl':<9}{'op':<23}{'shape':<22}{'dropout':>8}{'ok':>5}{'score':>9}{'s':>8}")
    rows, choices = [], {}
    started = time.perf_counter()
    for dtype_name in args.dtypes:
        for stage, (micro_batch, seq) in stages.items():
            for impl in args.impls:
                config = GPT2Config.from_preset(preset, attention_impl=impl)
                uses = kernel_uses(config, micro_batch, seq)
                selection = ops.select_kernels("auto", uses, device, TORCH_DTYPES[dtype_name])
                choices[f"{dtype_name}/{stage}/{impl}"] = selection.choice.describe(selection.ops)
                for checks in selection.results.values():
                    for r in checks:
                        rows.append(
                            {
                                "dtype": dtype_name,
                                "stage": stage,
                                "impl": impl,
                                "op": r.use.op,
                                "shape": list(r.use.shape),
                                "dropout": r.use.dropout_p,
                                "ok": r.ok,
                                "score": None if math.isinf(r.score) else round(r.score, 4),
                                "seconds": round(r.seconds, 2),
                                "detail": r.detail,
                            }
                        )
                        score = "inf" if math.isinf(r.score) else f"{r.score:.3f}"
                        print(
                            f"{dtype_name:<6}{stage:<8}{impl:<9}{r.use.op:<23}{str(list(r.use.shape)):<22}"
                            f"{r.use.dropout_p:>8g}{'yes' if r.ok else 'NO':>5}{score:>9}{r.seconds:>8.2f}",
                            flush=True,
                        )
    failed = sorted({f"{r['dtype']}/{r['op']}" for r in rows if not r["ok"]})
    print("\nscore = the worst error as a share of its tolerance (<= 1 passes; the rest is margin)")
    for key, choice in choices.items():
        print(f"  --kernels auto at {key}: {choice}")
    print(f"failed: {', '.join(failed) if failed else 'none'}; total {time.perf_counter() - started:.0f} s")
    worst = max((r["score"] for r in rows if r["ok"]), default=None)
    summary = {"device": name, "checks": len(rows), "failed": failed, "worst_passing_score": worst, "rows": rows}
    print("summary: " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
