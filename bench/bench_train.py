"""Training throughput: the full DeepSpeed path of pretrain_gpt.py against a plain PyTorch loop.

    python bench/bench_train.py                  # CPU: 2 ranks over gloo, tiny model (a few minutes)
    python bench/bench_train.py --host-overhead  # CPU: near-zero compute, what the loop costs per step
    python bench/bench_train.py --gpu            # GPU: the stage-2 shape, MFU (about a minute on an H100)
    python bench/bench_train.py --gpu --stage 1 --no-baseline --variant eager= --variant compiled=--compile

Both paths train the same model (same init), on the same data, batch and number of steps, in the
same processes, measured in alternating chunks so that a busy machine slows both alike:
  deepspeed  megatron_zh.training: deepspeed.initialize (ZeRO-1, torch AdamW, WarmupDecayLR,
             clipping, bf16 on GPU), each chunk of steps run by the training loop itself (loop.train:
             micro-batches, engine.backward/step, the per-step stop agreement, the losses read back at
             the chunk's one log step)
  plain      the loop a PyTorch user writes: DistributedDataParallel (no_sync while accumulating),
             torch.optim.AdamW, clip_grad_norm_, LambdaLR with the same schedule, torch.autocast
             for bf16 on GPU, and a per-step loss all-reduce read on the host
  engine     (--host-overhead only) the first variant's DeepSpeed engine stepped bare, loop.train_step and
             nothing else: plain/engine is DeepSpeed's own cost, engine/deepspeed what our loop adds to it
Printed: tokens/s of each (median over --repeats chunks), the overhead ratio plain/deepspeed
(median over repeats of the ratio of back-to-back chunks; target <= 1.15 on CPU; with --host-overhead,
gpt2-tiny at seq 16, one sequence per rank and step, almost all of a step is the loop's own host work:
target <= 1.1), TFLOP/s per device
and MFU (model FLOPs: megatron_zh.model.model_flops_per_token; peak: the device table in
megatron_zh.training.metrics, or --peak-tflops).

Variants (--variant NAME=FLAGS, repeatable): several DeepSpeed paths, each with pretrain_gpt.py flags of
its own over the same run (`compiled=--compile`, `pytorch=--kernels torch`), each with its own engine
and loader, measured in the same alternating chunks; printed as a ratio against the first variant.
Default: one, "deepspeed". Each path reports its peak CUDA memory during its chunks, absolute and above
what was allocated when its chunk began (activations and transients: the other paths' engines stay
allocated).

GPU shapes (--gpu): gpt2-distil, bf16, Triton kernels (after the start-up self-check), ZeRO-1;
--stage 2 (default): seq 1024, micro-batch 16 per GPU, ds_configs/stage2.json, target >= 45% MFU on
an H100; --stage 1: seq 128, micro-batch 64, ds_configs/stage1.json. Data: the CLUECorpusSmall sample under
MEGATRON_ZH_DATA_DIR (tokenized into runs/bench/ on first use), or --data-path/--vocab-file, or
random tokens (--synthetic, automatic when no data is found: throughput does not depend on content).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GPU_STAGES = {1: ("stage1.json", 128, 64), 2: ("stage2.json", 1024, 16)}  # config, seq, micro-batch
DATA_DIR = Path(os.environ.get("MEGATRON_ZH_DATA_DIR", REPO.parent / "shared" / "data"))
BENCH_DATA = REPO / "runs" / "bench" / "data"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="a GPU stage shape (bf16, gpt2-distil; see --stage)")
    p.add_argument("--stage", type=int, choices=sorted(GPU_STAGES), default=2, help="with --gpu: its shape")
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="NAME=FLAGS",
        help="a DeepSpeed path with these pretrain_gpt.py flags (repeatable; default: one, 'deepspeed')",
    )
    p.add_argument(
        "--host-overhead",
        action="store_true",
        help="near-zero compute: gpt2-tiny, seq 16, one sequence per rank and step (what the loop itself costs)",
    )
    p.add_argument("--ranks", type=int, default=None, help="data-parallel ranks (default: 2 on CPU, 1 with --gpu)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per chunk (default 10 CPU, 30 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 CPU, 10 GPU)")
    p.add_argument("--repeats", type=int, default=3, help="alternating chunks per path")
    p.add_argument("--ds_config", default=None, help="default: ds_configs/cpu_tiny.json, or stage2.json with --gpu")
    p.add_argument("--model", default=None)
    p.add_argument("--seq-length", type=int, default=None)
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--accumulation", type=int, default=None, help="gradient accumulation steps (default: the config's)")
    p.add_argument("--lm-loss", default=None, choices=("fused", "logits"), help="the LM head's loss (default: fused)")
    p.add_argument("--data-path", default=None)
    p.add_argument("--vocab-file", default=None)
    p.add_argument("--synthetic", action="store_true", help="random tokens instead of the corpus")
    p.add_argument("--no-baseline", action="store_true", help="measure the DeepSpeed path only")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", default=None, help="also write the summary to this file")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.host_overhead:
        args.model, args.seq_length = args.model or "gpt2-tiny", args.seq_length or 16
        args.micro_batch_size, args.accumulation = args.micro_batch_size or 1, args.accumulation or 1
        args.steps, args.warmup = args.steps or 100, 10 if args.warmup is None else args.warmup
        args.repeats = max(args.repeats, 5)
    args.ranks = args.ranks or (1 if args.gpu else 2)
    args.steps = args.steps or (30 if args.gpu else 10)
    args.warmup = args.warmup if args.warmup is not None else (10 if args.gpu else 3)
    config, seq_length, micro_batch = GPU_STAGES[args.stage]
    args.ds_config = args.ds_config or str(REPO / "ds_configs" / (config if args.gpu else "cpu_tiny.json"))
    if args.gpu:
        args.model = args.model or "gpt2-distil"
        args.seq_length = args.seq_length or seq_length
        args.micro_batch_size = args.micro_batch_size or micro_batch
    args.variants = parse_variants(args.variant or ["deepspeed="])
    return args


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """["compiled=--compile --kernels auto"] -> {"compiled": ["--compile", "--kernels", "auto"]}."""
    variants = {}
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name or name == "plain" or name in variants:
            raise SystemExit(f"--variant {spec!r}: write NAME=FLAGS with a new name other than 'plain'")
        variants[name] = shlex.split(flags)
    return variants


# ----------------------------------------------------------------------------------------- parent side


def prepare_data(args) -> None:
    """Resolve --data-path/--vocab-file (tokenizing the sample corpus once), or fall back to --synthetic."""
    if args.synthetic or args.data_path:
        return
    prefix = BENCH_DATA / "clue_sampled_text_document"
    vocab = BENCH_DATA / "google_zh_vocab.txt"
    if not Path(str(prefix) + ".idx").is_file():
        corpus, source_vocab = DATA_DIR / "CLUECorpusSmall_sampled.txt", DATA_DIR / "google_zh_vocab.txt"
        if not (corpus.is_file() and source_vocab.is_file()):
            print(f"no corpus under {DATA_DIR} (MEGATRON_ZH_DATA_DIR): using random tokens", flush=True)
            args.synthetic = True
            return
        BENCH_DATA.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_vocab, vocab)
        print(f"tokenizing {corpus} -> {prefix} ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(REPO / "tools" / "preprocess_data.py"),
                "--input",
                str(corpus),
                "--output-prefix",
                str(BENCH_DATA / "clue_sampled"),
                "--vocab-file",
                str(vocab),
            ],
            check=True,
            cwd=REPO,
        )
    args.data_path, args.vocab_file = str(prefix), str(vocab)


def forward_argv(args) -> list[str]:
    argv = [
        f"--ranks={args.ranks}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--repeats={args.repeats}",
        f"--ds_config={args.ds_config}",
    ]
    for name in (
        "model",
        "seq_length",
        "micro_batch_size",
        "accumulation",
        "lm_loss",
        "data_path",
        "vocab_file",
        "peak_tflops",
        "json",
    ):
        value = getattr(args, name)
        if value is not None:
            argv.append(f"--{name.replace('_', '-')}={value}")
    argv += ["--gpu"] * args.gpu + ["--synthetic"] * args.synthetic + ["--no-baseline"] * args.no_baseline
    argv += ["--host-overhead"] * args.host_overhead
    argv += [
        f"--stage={args.stage}",
        *(f"--variant={name}={shlex.join(flags)}" for name, flags in args.variants.items()),
    ]
    return argv


def launch(args) -> int:
    from megatron_zh.training.distributed.process_group import free_port

    deepspeed = Path(sys.executable).parent / "deepspeed"
    cmd = [
        str(deepspeed) if deepspeed.exists() else "deepspeed",
        "--num_gpus",
        str(args.ranks),
        "--master_port",
        str(free_port()),
        str(Path(__file__).resolve()),
        *forward_argv(args),
    ]
    return subprocess.run(cmd, cwd=REPO).returncode


# ------------------------------------------------------------------------------------------- rank side


class RandomTokens:
    """Uniform random token windows shaped like GPTDataset's samples (seeded by index: reproducible)."""

    def __init__(self, num_samples: int, seq_length: int, vocab_size: int):
        self.num_samples, self.seq_length, self.vocab_size = num_samples, seq_length, vocab_size

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict:
        import numpy as np

        tokens = np.random.default_rng(idx).integers(0, self.vocab_size, self.seq_length + 1, dtype=np.int64)
        return {
            "tokens": tokens,
            "input_ids": tokens[:-1],
            "labels": tokens[1:],
            "loss_mask": np.ones(self.seq_length, dtype=np.float32),
        }


def build_run(args, world_size: int, extra: list[str] = ()):
    """The run a path trains: pretrain_gpt.py's flags for the benchmark's shape, then `extra` (a variant's)."""
    from megatron_zh.training.config.arguments import build_parser, build_run_config

    total_steps = args.warmup + args.steps * args.repeats + 1
    argv = [
        "--ds_config",
        args.ds_config,
        "--train-iters",
        str(total_steps),
        "--eval-interval",
        "0",
        "--save-interval",
        "0",
        "--num-workers",
        "0",
        "--lr-warmup-iters",
        "2",
        "--log-interval",  # one log step per timed chunk, as a real run logs every 10-100 steps
        str(args.steps),
    ]
    for flag, value in (
        ("--model", args.model),
        ("--seq-length", args.seq_length),
        ("--micro-batch-size", args.micro_batch_size),
        ("--lm-loss", args.lm_loss),
        ("--data-path", args.data_path),
        ("--vocab-file", args.vocab_file),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if args.accumulation is not None:
        micro = args.micro_batch_size or build_run_config(build_parser().parse_args(argv), world_size).micro_batch_size
        argv += ["--global-batch-size", str(micro * args.accumulation * world_size)]
    elif args.gpu:
        argv += ["--global-batch-size", str(args.micro_batch_size * world_size)]
    run = build_run_config(build_parser().parse_args([*argv, *extra]), world_size)
    # No checkpoints: the config's save directory would get one at the end of every timed chunk (train() saves
    # at its last iteration), and the chunk's time would be mostly the save's.
    return dataclasses.replace(run, train=dataclasses.replace(run.train, save=None, load=None, keep_last=None))


class PlainLoop:
    """The baseline: what a PyTorch user writes for data-parallel AdamW training."""

    def __init__(self, run, env, device, loader):
        import torch

        from megatron_zh.training.engine import init_model, optimizer_param_groups

        self.run, self.env, self.device = run, env, device
        self.batches = iter(loader)
        model = init_model(run.model, run.train.data.seed, lm_loss=run.train.model.lm_loss).to(device)
        params = run.deepspeed["optimizer"]["params"]
        self.optimizer = torch.optim.AdamW(
            optimizer_param_groups(model, float(params.get("weight_decay", 0.0))),
            lr=params["lr"],
            betas=tuple(params.get("betas", (0.9, 0.999))),
            eps=params.get("eps", 1e-8),
        )
        sched = run.deepspeed["scheduler"]["params"]
        warmup, total = sched["warmup_num_steps"], sched["total_num_steps"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: i / warmup if i < warmup else max(0.0, (total - i) / (total - warmup))
        )
        if env.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[env.local_rank] if device.type == "cuda" else None
            )
        self.model = model
        self.clip = float(run.deepspeed.get("gradient_clipping", 0.0))
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.precision == "bf16")

    def step(self) -> float:
        import contextlib

        import torch

        from megatron_zh.training.distributed.process_group import all_reduce_sum
        from megatron_zh.training.loaders import to_device

        accumulation = self.run.gradient_accumulation_steps
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(accumulation):
            batch = to_device(next(self.batches), self.device)
            last = micro == accumulation - 1
            sync = contextlib.nullcontext() if last or self.env.world_size == 1 else self.model.no_sync()
            with sync:
                with self.autocast:
                    loss = self.model(batch["input_ids"], labels=batch["labels"], loss_mask=batch["loss_mask"]).loss
                (loss / accumulation).backward()
            loss_sum += loss.detach().float()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return all_reduce_sum([loss_sum], self.device)[0] / (accumulation * self.env.world_size)


class CudaMemory:
    """Peak CUDA memory of one path over its timed chunks (None on CPU)."""

    def __init__(self):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.peak = self.above_start = 0

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            self.start = self.torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            peak = self.torch.cuda.max_memory_allocated()
            self.peak, self.above_start = max(self.peak, peak), max(self.above_start, peak - self.start)

    def gib(self, value: int) -> float | None:
        return round(value / 2**30, 3) if self.cuda else None


class LastLoss:
    """The train loop's metrics sink, keeping only the last logged loss."""

    loss = float("nan")

    def train(self, record: dict) -> None:
        self.loss = record["loss"]

    def eval(self, record: dict) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def deepspeed_path(env, run, dataset, fingerprint, normalization, flops, stop, stop_flag):
    """One variant: its kernels (the start-up self-check), its engine (compiled with --compile), its loader.
    Returns (chunk: steps -> the loss logged, its TrainContext, the setup line)."""
    from megatron_zh.training.checkpointing.start import TrainState
    from megatron_zh.training.engine import build_engine, start_lr_schedule
    from megatron_zh.training.kernel_check import choose_kernels
    from megatron_zh.training.loaders import build_loaders
    from megatron_zh.training.loop import TrainContext, train

    kernels = choose_kernels(run, env)
    engine = build_engine(run, kernels.choice)
    start_lr_schedule(engine)
    loader, _ = build_loaders(run, env, dataset, None, 0)
    ctx = TrainContext(
        run=run,
        env=env,
        engine=engine,
        train_batches=iter(loader),
        valid_loader=None,
        valid_sources={},
        metrics=LastLoss(),
        flops=flops,
        device=engine.device,
        vocab_fingerprint=fingerprint or "",
        vocab_size=run.model.vocab_size,
        normalization=normalization,
    )
    state = TrainState()
    setup = f"{kernels.summary()}; torch.compile: {'on' if engine.is_compiled else 'off'}"

    def chunk(steps: int) -> float:
        """`steps` iterations of the training loop itself, as pretrain_gpt.py runs it; the loss it logged."""
        ctx.run = dataclasses.replace(run, train=dataclasses.replace(run.train, train_iters=state.iteration + steps))
        train(ctx, state, stop, stop_flag)
        return ctx.metrics.loss

    return chunk, ctx, setup


def rank_main(args) -> None:
    import torch

    from megatron_zh.model import model_flops_per_token
    from megatron_zh.training.distributed.process_group import (
        AnyRankFlag,
        init_process_group,
        set_cpu_threads,
        setup_rendezvous_env,
    )
    from megatron_zh.training.distributed.signals import StopRequest
    from megatron_zh.training.loaders import build_datasets, build_loaders
    from megatron_zh.training.loop import train_step
    from megatron_zh.training.metrics import FlopsCounter, device_peak_tflops
    from megatron_zh.training.preflight import check_data, check_device, check_vocab

    env = setup_rendezvous_env(args.local_rank)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    threads = torch.get_num_threads() if torch.cuda.is_available() else set_cpu_threads(env)
    runs = {name: build_run(args, env.world_size, flags) for name, flags in args.variants.items()}
    run = next(iter(runs.values()))
    check_device(run)
    if args.synthetic:
        fingerprint = None
        pad_id = None
        normalization = "none"  # random ids: no text, no normalisation
        samples = run.train.train_iters * run.global_batch_size
        train_dataset = RandomTokens(samples, run.train.data.seq_length, run.model.vocab_size)
    else:
        fingerprint, _, pad_id = check_vocab(run)
        normalization = check_data(run, fingerprint)
    init_process_group(env)
    if not args.synthetic:
        train_dataset, _ = build_datasets(run, fingerprint, pad_id, normalization)

    peak, peak_source = device_peak_tflops(run.precision, threads, args.peak_tflops)
    flops = FlopsCounter(model_flops_per_token(run.model, run.train.data.seq_length), env.world_size, peak)
    stop = StopRequest()
    stop_flag = AnyRankFlag()  # one for all chunks: a new one per train() call would add a group set-up to each

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    paths, setups, contexts = {}, {}, {}
    for name, variant_run in runs.items():
        paths[name], contexts[name], setups[name] = deepspeed_path(
            env, variant_run, train_dataset, fingerprint, normalization, flops, stop, stop_flag
        )
        if args.warmup:  # allocator, Triton autotuning, compiling, DeepSpeed's first-step set-up
            paths[name](args.warmup)
    first = next(iter(runs))
    device = contexts[first].device
    if args.host_overhead:
        bare = dataclasses.replace(
            contexts[first], train_batches=iter(build_loaders(run, env, train_dataset, None, 0)[0])
        )

        def engine_chunk(steps: int) -> float:
            losses = [train_step(bare) for _ in range(steps)]
            return float(losses[-1]) / run.gradient_accumulation_steps

        engine_chunk(max(args.warmup, 1))
        paths["engine"] = engine_chunk
    if not args.no_baseline:
        try:
            plain = PlainLoop(run, env, device, build_loaders(run, env, train_dataset, None, 0)[0])

            def plain_chunk(steps: int) -> float:
                return [plain.step() for _ in range(steps)][-1]

            if args.warmup:
                plain_chunk(args.warmup)
            paths = {"plain": plain_chunk, **paths}
        except Exception as exc:  # one rank only: the DeepSpeed figure is still worth reporting
            if env.world_size > 1:
                raise
            print(f"plain PyTorch baseline failed, reporting DeepSpeed only: {type(exc).__name__}: {exc}", flush=True)
    tokens_per_s: dict[str, list[float]] = {name: [] for name in paths}
    memory = {name: CudaMemory() for name in paths}
    losses: dict[str, float] = {}
    for repeat in range(args.repeats):
        order = list(paths) if repeat % 2 == 0 else list(reversed(paths))  # no path always goes first
        for name in order:
            sync()
            start = time.perf_counter()
            with memory[name]:
                losses[name] = paths[name](args.steps)
                sync()
            tokens_per_s[name].append(args.steps * run.tokens_per_step / (time.perf_counter() - start))
    # Each repeat's chunks ran back to back, so their ratios cancel slow drifts in machine load.
    ratios = [p / d for p, d in zip(tokens_per_s.get("plain", []), tokens_per_s[first])]
    loop_ratios = [e / d for e, d in zip(tokens_per_s.get("engine", []), tokens_per_s[first])]
    engine_ratios = [p / e for p, e in zip(tokens_per_s.get("plain", []), tokens_per_s.get("engine", []))]
    variant_ratios = {
        name: round(statistics.median(v / f for v, f in zip(tokens_per_s[name], tokens_per_s[first])), 4)
        for name in list(runs)[1:]
    }

    median = {name: statistics.median(v) for name, v in tokens_per_s.items()}
    summary = {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU x {env.world_size} ranks ({threads} thread(s) each)",
        "model": run.train.model.preset,
        "precision": run.precision,
        "lm_loss": {name: r.train.model.lm_loss for name, r in runs.items()},
        "seq_length": run.train.data.seq_length,
        "micro_batch_size": run.micro_batch_size,
        "gradient_accumulation_steps": run.gradient_accumulation_steps,
        "world_size": env.world_size,
        "global_batch_size": run.global_batch_size,
        "data": "random tokens" if args.synthetic else args.data_path,
        "variants": {name: shlex.join(flags) for name, flags in args.variants.items()},
        "setup": setups,
        "steps_per_chunk": args.steps,
        "repeats": args.repeats,
        "tokens_per_s": {name: [round(x, 1) for x in v] for name, v in tokens_per_s.items()},
        "tokens_per_s_median": {name: round(v, 1) for name, v in median.items()},
        "overhead_ratio_per_repeat": [round(r, 4) for r in ratios],
        "overhead_ratio_plain_over_deepspeed": round(statistics.median(ratios), 4) if ratios else None,
        f"speed_ratio_over_{first}": variant_ratios,
        f"ratio_engine_over_{first}": round(statistics.median(loop_ratios), 4) if loop_ratios else None,
        "ratio_plain_over_engine": round(statistics.median(engine_ratios), 4) if engine_ratios else None,
        "tflops_per_device": {name: round(flops.tflops_per_device(v), 3) for name, v in median.items()},
        "mfu": {name: (None if flops.mfu(v) is None else round(flops.mfu(v), 4)) for name, v in median.items()},
        "peak_tflops_per_device": peak,
        "peak_source": peak_source,
        "last_loss": {name: round(v, 4) for name, v in losses.items()},
        "peak_memory_gib": {name: m.gib(m.peak) for name, m in memory.items()},
        "peak_memory_above_chunk_start_gib": {name: m.gib(m.above_start) for name, m in memory.items()},
    }
    if env.is_main:
        for name, line in setups.items():
            print(f"{name:>10}: {line}", flush=True)
        for name in paths:
            mfu = summary["mfu"][name]
            print(
                f"{name:>10}: {median[name]:12.1f} tokens/s  (chunks: "
                f"{', '.join(f'{x:.0f}' for x in tokens_per_s[name])})  "
                f"{summary['tflops_per_device'][name]:.3f} TFLOP/s/device  "
                f"MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}",
                flush=True,
            )
        ratio = summary["overhead_ratio_plain_over_deepspeed"]
        if ratio is not None:
            target = "1.1 at near-zero compute" if args.host_overhead else "1.15 on CPU"
            print(f"overhead ratio plain/{first}: {ratio:.3f} (target <= {target})", flush=True)
        if loop_ratios:
            print(
                f"  of which DeepSpeed's engine (plain/engine): {summary['ratio_plain_over_engine']:.3f}, "
                f"our loop around it (engine/{first}): {summary[f'ratio_engine_over_{first}']:.3f}",
                flush=True,
            )
        for name, value in variant_ratios.items():
            print(f"speed ratio {name}/{first}: {value:.3f} (tokens/s, median of back-to-back chunks)", flush=True)
        if args.gpu and args.stage == 2:
            mfu = summary["mfu"][first]
            print(
                f"MFU of the DeepSpeed path at the stage-2 shape: {'n/a' if mfu is None else f'{100 * mfu:.1f}%'} "
                "(target >= 45% on an H100)",
                flush=True,
            )
        print(f"peak: {peak_source}", flush=True)
        print("summary: " + json.dumps(summary), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(argv=None) -> int:
    args = parse_args(argv)
    if "RANK" in os.environ:  # a rank started by launch()
        rank_main(args)
        return 0
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("--gpu needs a CUDA GPU; nothing measured", file=sys.stderr)
            return 2
    prepare_data(args)
    if args.ranks == 1:
        rank_main(args)
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
