"""pretrain_gpt.py's body: configure and validate, then set up the engine and data, then train.

Order matters: everything that can be wrong with the configuration, the files or the hardware is
found before the process group, the model or the dataset indices are built; the RNG states of a
resumed run are restored last, after everything that draws from them at start-up. A start that is
refused leaves the save directory as it was: rank 0 writes config.json and tidies the folders only once
the last check that can refuse (the build lock, the universal copy, the load) has passed.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from megatron_zh.checkpoint.safety import trusting_checkpoints
from megatron_zh.log import get_logger
from megatron_zh.model import model_flops_per_token
from megatron_zh.training.checkpointing.resume import load_checkpoint, prepare_resume
from megatron_zh.training.checkpointing.rng import restore_rng_state
from megatron_zh.training.checkpointing.save import write_run_config
from megatron_zh.training.checkpointing.start_guard import tidy_save_directory
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.config.run_config import RunConfig
from megatron_zh.training.distributed.process_group import (
    DistEnv,
    init_process_group,
    set_cpu_threads,
    setup_rendezvous_env,
)
from megatron_zh.training.distributed.signals import StopRequest
from megatron_zh.training.engine import build_engine, start_lr_schedule
from megatron_zh.training.kernel_check import choose_kernels
from megatron_zh.training.loaders import (
    build_datasets,
    build_loaders,
    build_validation_datasets,
    build_validation_loaders,
)
from megatron_zh.training.loop import Outcome, TrainContext, train
from megatron_zh.training.metrics import FlopsCounter, MetricsLogger, device_peak_tflops
from megatron_zh.training.preflight import Preflight, validate

logger = get_logger(__name__)


def seed_everything(seed: int) -> None:
    """Same seed on every data-parallel rank, as Megatron (data differs per rank; dropout streams need not)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _quiet_other_ranks(env: DistEnv) -> None:
    if not env.is_main:
        logging.getLogger("megatron_zh").setLevel(logging.WARNING)
    # DeepSpeed logs its whole config and a progress line per steps_per_print at INFO; ours covers both.
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def run_training(run: RunConfig, env: DistEnv, preflight: Preflight, effective: dict[str, Any]) -> Outcome:
    """Set up and train. `effective`: the configuration as printed; rank 0 saves it, with the kernels the
    self-check chose, as the save directory's config.json."""
    threads = torch.get_num_threads() if torch.cuda.is_available() else set_cpu_threads(env)
    backend = init_process_group(env, run.train.distributed_timeout_minutes)
    logger.info(
        "rank %d/%d (local %d), backend %s, %s",
        env.rank,
        env.world_size,
        env.local_rank,
        backend,
        f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else f"CPU, {threads} thread(s)",
    )
    seed_everything(run.train.data.seed)
    kernels = choose_kernels(run, env)  # draws nothing from the RNG streams just seeded
    start = prepare_resume(preflight.start, run, env)  # a universal copy when the data-parallel size changed
    vocab = (preflight.vocab_fingerprint, preflight.pad_id, preflight.normalization)
    train_dataset, valid_dataset = build_datasets(run, *vocab)
    source_datasets = build_validation_datasets(run, *vocab)
    engine = build_engine(run, kernels.choice)
    model = engine.module
    state, rng_state = load_checkpoint(engine, start, env)
    if env.is_main:  # the run really starts: nothing after this refuses it
        record_start(run, preflight, {**effective, "kernels": kernels.to_dict()})
    if preflight.start.mode != "resume":
        start_lr_schedule(engine)
    if state.iteration >= run.train.train_iters:
        if env.is_main:
            print(f"already at iteration {state.iteration} of {run.train.train_iters}: nothing to train", flush=True)
        _finish()
        return Outcome(state, "completed")
    train_loader, valid_loader = build_loaders(run, env, train_dataset, valid_dataset, state.consumed_samples)
    source_loaders = build_validation_loaders(run, env, source_datasets)
    peak, peak_source = device_peak_tflops(run.precision, threads, run.train.peak_tflops)
    flops = FlopsCounter(model_flops_per_token(run.model, run.train.data.seq_length), env.world_size, peak)
    metrics = MetricsLogger(env.is_main, run.train.save, run.train.tensorboard_path, state.iteration)
    metrics.message(
        f"model: {run.train.model.preset}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{flops.flops_per_token / 1e9:.3f} GFLOP/token (fwd+bwd); peak "
        f"{'n/a' if peak is None else f'{peak:.2f} TFLOP/s'} per device ({peak_source})"
    )
    metrics.setup(state.iteration, kernels.to_dict(), engine.is_compiled, kernels.summary())
    ctx = TrainContext(
        run=run,
        env=env,
        engine=engine,
        train_batches=iter(train_loader),
        valid_loader=valid_loader,
        valid_sources=source_loaders,
        metrics=metrics,
        flops=flops,
        device=engine.device,
        vocab_fingerprint=preflight.vocab_fingerprint,
        vocab_size=preflight.vocab_size,
        normalization=preflight.normalization,
    )
    if rng_state is not None:
        restore_rng_state(rng_state)  # after iter(train_loader), which draws a seed from torch's RNG
    try:
        with StopRequest() as stop:
            outcome = train(ctx, state, stop)
    finally:
        metrics.close()
    _finish()
    return outcome


def record_start(run: RunConfig, preflight: Preflight, effective: dict[str, Any]) -> None:
    """Rank 0, once nothing can refuse the start any more: what the start guard decided, done on disk
    (incomplete folders renamed, never deleted; `latest` pointed at --ckpt-step's choice; the newer ones set
    aside when asked), and the effective configuration saved as the save directory's config.json."""
    tidy_save_directory(run.train, preflight.start, run.zero_stage > 0)
    if run.train.save:
        write_run_config(run.train.save, effective)


def _finish() -> None:
    """Leave the process group together (no rank exits while another still talks to it)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = setup_rendezvous_env(args.local_rank)
    _quiet_other_ranks(env)
    run = build_run_config(args, env.world_size)
    with trusting_checkpoints(run.train.trust_checkpoint):
        preflight = validate(run)
        effective: dict[str, Any] = {}
        if env.is_main:
            argv_given = list(sys.argv if argv is None else argv)
            effective = {**run.to_dict(), "start": preflight.start.mode, "argv": argv_given}
            print("effective configuration:\n" + json.dumps(effective, indent=2, default=str), flush=True)
        outcome = run_training(run, env, preflight, effective)
    logger.info("finished at iteration %d (%s)", outcome.state.iteration, outcome.reason)
    return 0
