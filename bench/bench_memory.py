"""Peak memory and time of one training step on CPU: the LM head and attention before and after the fused loss,
against transformers' GPT2LMHeadModel, measured side by side in one run.

    python bench/bench_memory.py                      # gpt2-distil, 4 x 1024 tokens, fp32, dropout 0.1 and 0
    python bench/bench_memory.py --dropout 0.1 --steps 5 --threads 2

Variants (same config, weights and tokens):
  transformers  GPT2LMHeadModel (attention "sdpa"), labels = input_ids (it shifts them itself)
  logits        ours as before: the logits, then their cross-entropy (--lm-loss logits), attention by
                F.scaled_dot_product_attention (attention_impl "torch": SDPA's math path when dropout is on)
  fused         the fused chunked LM-head loss (model/lm_loss.py), attention still SDPA
  fused+blocks  today's default: the fused loss and, with dropout on CPU, ops/blockwise_attention.py

Memory: each variant in a fresh process started with MALLOC_MMAP_THRESHOLD_=65536, which pins glibc's mmap
threshold (it otherwise grows after frees, and freed big tensors stay resident in the heap): every tensor of
64 KiB or more is its own mapping and leaves RSS when freed. The child zero-fills every .grad (backward then
accumulates in place), runs one warm-up step, resets the kernel's peak-RSS counter (/proc/self/clear_refs),
takes VmRSS as the baseline (weights, gradients, inputs, runtime) and reports VmHWM - baseline over one
forward + backward: the peak above weights and gradients.
Time: forward + backward (no optimizer step: it is the same for all), the variants' steps interleaved in a
rotating order in one process, median over --steps after a warm-up; wall time and the calling thread's CPU
time (with --threads 1, all the work: robust to other jobs on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("transformers", "logits", "fused", "fused+blocks")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-distil")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-length", type=int, default=1024)
    p.add_argument("--dropout", type=float, nargs="+", default=[0.1, 0.0], help="dropout settings to measure")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (0: memory only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one memory measurement: VARIANT:DROPOUT
    return p.parse_args(argv)


def build(variant: str, args: argparse.Namespace, dropout: float):
    import torch

    from megatron_zh.convert.hf.names import to_hf_config, to_hf_state_dict
    from megatron_zh.model import GPT2Config, GPT2Model

    config = GPT2Config.from_preset(args.preset, hidden_dropout=dropout, attention_dropout=dropout)
    torch.manual_seed(0)
    ours = GPT2Model(
        config if variant == "fused+blocks" else GPT2Config.from_dict({**config.to_dict(), "attention_impl": "torch"}),
        lm_loss="logits" if variant == "logits" else "fused",
    )
    model: torch.nn.Module = ours
    if variant == "transformers":
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel(to_hf_config(config))
        model.load_state_dict(to_hf_state_dict(ours.state_dict(), config))
    model.train()
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    return model


def inputs(args: argparse.Namespace, vocab_size: int):
    import torch

    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab_size, (args.batch_size, args.seq_length + 1), generator=gen)
    return tokens[:, :-1], tokens[:, 1:], torch.ones(args.batch_size, args.seq_length)


def train_step(variant: str, model, batch) -> float:
    ids, labels, mask = batch
    if variant == "transformers":
        loss = model(input_ids=ids, labels=ids).loss
    else:
        loss = model(ids, labels=labels, loss_mask=mask).loss
    loss.backward()
    return loss.item()


def resident_mib() -> dict[str, float]:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def child(args: argparse.Namespace) -> None:
    import gc

    import torch

    torch.set_num_threads(args.threads)
    variant, dropout = args.child.rsplit(":", 1)
    model = build(variant, args, float(dropout))
    batch = inputs(args, model.config.vocab_size)
    train_step(variant, model, batch)  # warm-up: lazy initialisation, thread pools
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM := VmRSS
    base = resident_mib()["VmRSS"]
    loss = train_step(variant, model, batch)
    peak = resident_mib()["VmHWM"] - base
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(json.dumps({"peak_mib": peak, "base_mib": base, "weights_mib": weights, "loss": loss}))


def measure_memory(args: argparse.Namespace, dropout: float) -> dict[str, dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(REPO))
    results = {}
    for variant in args.variants:
        command = [sys.executable, __file__, f"--child={variant}:{dropout}", *sys.argv[1:]]
        out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    return results


def measure_time(args: argparse.Namespace, dropout: float) -> dict[str, dict]:
    import torch

    torch.set_num_threads(args.threads)
    models = {variant: build(variant, args, dropout) for variant in args.variants}
    batch = inputs(args, next(iter(models.values())).config.vocab_size)
    wall: dict[str, list[float]] = {v: [] for v in models}
    cpu: dict[str, list[float]] = {v: [] for v in models}
    names = list(models)
    for i in range(1 + args.steps):
        for variant in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
            torch.manual_seed(100 + i)
            start, start_cpu = time.perf_counter(), time.thread_time()
            train_step(variant, models[variant], batch)
            if i > 0:  # the first round is the warm-up
                wall[variant].append(time.perf_counter() - start)
                cpu[variant].append(time.thread_time() - start_cpu)
    return {v: {"wall_s": statistics.median(wall[v]), "cpu_s": statistics.median(cpu[v])} for v in names}


def report(dropout: float, memory: dict[str, dict], times: dict[str, dict]) -> None:
    hf = memory.get("transformers", {}).get("peak_mib")
    today = memory.get("logits", {}).get("peak_mib")
    print(f"\ndropout {dropout}: peak above weights + gradients, one forward + backward")
    for variant, result in memory.items():
        references = (("transformers", hf), ("logits", today))
        ratios = [f"{result['peak_mib'] / ref:.2f}x {name}" for name, ref in references if ref]
        line = f"  {variant:<13}{result['peak_mib']:8.0f} MiB  ({', '.join(ratios)})  loss {result['loss']:.4f}"
        if variant in times:
            t, base = times[variant], times.get("logits")
            vs = f" = {t['cpu_s'] / base['cpu_s']:.2f}x logits" if base else ""
            line += f"  step: CPU {t['cpu_s']:.2f} s{vs}, wall {t['wall_s']:.2f} s"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    import torch

    print(
        f"{args.preset}, {args.batch_size} x {args.seq_length} tokens, float32, CPU, {args.threads} thread(s), "
        f"torch {torch.__version__}",
        flush=True,
    )
    results = {}
    for dropout in args.dropout:
        memory = measure_memory(args, dropout)
        times = measure_time(args, dropout) if args.steps else {}
        report(dropout, memory, times)
        results[str(dropout)] = {"memory": memory, "time": times}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
