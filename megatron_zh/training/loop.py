"""The training loop: micro-batches through the DeepSpeed engine, then logging, evaluation, checkpoints.

One iteration = one optimizer step = gradient_accumulation_steps micro-batches per rank.

The host never waits for the device between two logged steps. Each step's loss stays on the device;
the losses of the steps since the last read are summed over the ranks in one all-reduce and read in one go
where the host needs them: at a log step, before an evaluation or a save, and at the end. There they are
checked for NaN/inf in step order (NonFiniteGuard), so a run that goes non-finite stops at the next such
point with the same iterations named, and a save never keeps weights updated from a non-finite loss. Whether
a rank was asked to stop (SIGTERM/SIGINT) is agreed every step from host memory, one step late
(process_group.AnyRankFlag), which never waits for the device. Throughput is the wall time between two log
steps, less the evaluations and saves in between.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from megatron_zh.errors import MegatronZhError
from megatron_zh.log import get_logger
from megatron_zh.training import engine as engine_utils
from megatron_zh.training.checkpointing.save import save_checkpoint
from megatron_zh.training.checkpointing.start import TrainState
from megatron_zh.training.config.run_config import RunConfig
from megatron_zh.training.distributed.process_group import AnyRankFlag, DistEnv, all_reduce_sum
from megatron_zh.training.distributed.signals import StopRequest, StopSignal
from megatron_zh.training.loaders import to_device
from megatron_zh.training.metrics import FlopsCounter, MetricsLogger
from megatron_zh.training.validation_loss import validation_loss

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

logger = get_logger(__name__)

# Why train() returned: all train_iters done, --exit-interval reached, or a signal asked it to stop.
StopReason = Literal["completed", "exit_interval"] | StopSignal


class NonFiniteLossError(MegatronZhError):
    """The loss was NaN/inf for more steps in a row than the run tolerates."""


@dataclass
class TrainContext:
    run: RunConfig
    env: DistEnv
    engine: DeepSpeedEngine
    train_batches: Iterator[dict[str, Any]]
    valid_loader: Iterable[dict[str, Any]] | None
    valid_sources: dict[str, Iterable[dict[str, Any]]]  # --valid-data-path, by name
    metrics: MetricsLogger
    flops: FlopsCounter
    device: torch.device
    vocab_fingerprint: str
    vocab_size: int
    normalization: str  # the data's text normalisation, recorded in every checkpoint


@dataclass
class NonFiniteGuard:
    """Reports every non-finite loss with its iteration; raises after more than `tolerance` in a row."""

    tolerance: int
    in_row: int = 0
    last_finite: tuple[int, float] | None = None
    # An update was applied from a non-finite loss in the current streak: the weights are likely
    # NaN (fp16's loss scaler skips such steps; fp32 and bf16 apply them), so they are not saved.
    weights_suspect: bool = False

    def check(self, iteration: int, loss: float, update_applied: bool) -> None:
        if math.isfinite(loss):
            self.in_row, self.last_finite, self.weights_suspect = 0, (iteration, loss), False
            return
        self.in_row += 1
        self.weights_suspect = self.weights_suspect or update_applied
        logger.warning(
            "iteration %d: loss is %s (update %s by DeepSpeed; %d non-finite in a row)",
            iteration,
            loss,
            "APPLIED" if update_applied else "skipped",
            self.in_row,
        )
        if self.in_row > self.tolerance:
            since = (
                f"; last finite loss {self.last_finite[1]:.4f} at iteration {self.last_finite[0]}"
                if self.last_finite
                else ""
            )
            raise NonFiniteLossError(
                f"loss was non-finite for {self.in_row} iterations in a row "
                f"({iteration - self.in_row + 1}-{iteration}){since}; stopping instead of training on garbage. "
                "Lower --lr, check the data, or resume from an earlier checkpoint "
                "(--max-nonfinite-steps sets the tolerance)"
            )


@dataclass(frozen=True)
class Outcome:
    state: TrainState
    reason: StopReason


def _next_batch(ctx: TrainContext) -> dict[str, torch.Tensor]:
    try:
        return to_device(next(ctx.train_batches), ctx.device)
    except StopIteration:
        raise MegatronZhError(
            "the training data ran out before train_iters; the dataset was built for "
            "train_iters x global batch samples, so the loader and the config disagree"
        ) from None


def train_step(ctx: TrainContext) -> torch.Tensor:
    """Forward/backward of gradient_accumulation_steps micro-batches and one optimizer step (DeepSpeed
    applies it at the accumulation boundary). Returns this rank's summed micro-batch losses, on the device."""
    engine = ctx.engine
    loss_sum = torch.zeros((), dtype=torch.float32, device=ctx.device)
    for _ in range(ctx.run.gradient_accumulation_steps):
        batch = _next_batch(ctx)
        loss = engine(batch["input_ids"], labels=batch["labels"], loss_mask=batch["loss_mask"]).loss
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().float()
    return loss_sum


@dataclass
class LogWindow:
    """The steps since the last logged one: their losses, still on the device until read, and the wall time.

    A resumed run starts its first window with the losses its checkpoint carried (the steps between the
    last logged one and the save), so its first logged loss averages the same steps an uninterrupted
    run's does; `steps` and `started` count this process's steps only (they give the throughput)."""

    started: float  # time.perf_counter() when the window's first step began
    steps: int = 0
    unread: list[tuple[int, torch.Tensor, bool]] = field(default_factory=list)  # iteration, loss sum, applied
    unlogged: list[float | None] = field(default_factory=list)  # each read step's mean loss; None: non-finite

    @classmethod
    def resumed(cls, state: TrainState, log_interval: int, started: float) -> LogWindow:
        """The window a run continues: the carried losses of the steps after the last multiple of
        log_interval (all of them, unless the interval changed since the save)."""
        since_log = state.iteration % log_interval
        carried = state.unlogged_losses[-since_log:] if since_log else []
        return cls(started, unlogged=list(carried))

    @property
    def losses(self) -> list[float]:
        return [loss for loss in self.unlogged if loss is not None]

    @property
    def nonfinite(self) -> int:
        return sum(loss is None for loss in self.unlogged)

    def add(self, iteration: int, loss_sum: torch.Tensor, update_applied: bool) -> None:
        self.steps += 1
        self.unread.append((iteration, loss_sum, update_applied))

    def read(self, ctx: TrainContext, guard: NonFiniteGuard) -> None:
        """Sum the unread losses over the ranks and read them (the one wait for the device), oldest first
        through the guard."""
        if not self.unread:
            return
        totals = all_reduce_sum([loss for _, loss, _ in self.unread], ctx.device)
        per_step = ctx.run.gradient_accumulation_steps * ctx.env.world_size
        for (iteration, _, applied), total in zip(self.unread, totals):
            loss = total / per_step
            self.unlogged.append(loss if math.isfinite(loss) else None)
            guard.check(iteration, loss, applied)
        self.unread = []


def _log_train(ctx: TrainContext, state: TrainState, window: LogWindow, lr: float) -> None:
    run = ctx.run
    seconds = time.perf_counter() - window.started  # after window.read: the device has done these steps
    tokens_per_s = window.steps * run.tokens_per_step / seconds if seconds > 0 else 0.0
    seconds_per_step = seconds / max(window.steps, 1)
    ctx.metrics.train(
        {
            "iteration": state.iteration,
            "train_iters": run.train.train_iters,
            "consumed_samples": state.consumed_samples,
            "loss": sum(window.losses) / len(window.losses) if window.losses else float("nan"),
            "lr": lr,
            "grad_norm": engine_utils.grad_norm(ctx.engine),
            "loss_scale": engine_utils.loss_scale(ctx.engine),
            "global_batch_size": run.global_batch_size,
            "step_time_ms": 1000.0 * seconds_per_step,
            "tokens_per_s": tokens_per_s,
            "tflops": ctx.flops.tflops_per_device(tokens_per_s),
            "mfu": ctx.flops.mfu(tokens_per_s),
            "nonfinite_steps": window.nonfinite,
            "eta_s": seconds_per_step * (run.train.train_iters - state.iteration),
        }
    )


def _evaluate(ctx: TrainContext, state: TrainState) -> None:
    """The validation split's loss, then each validation source's, each its own record."""
    micro_batches = ctx.run.train.eval_iters * ctx.run.gradient_accumulation_steps
    loaders: dict[str | None, Iterable[dict[str, Any]]] = {} if ctx.valid_loader is None else {None: ctx.valid_loader}
    loaders.update(ctx.valid_sources)
    for source, loader in loaders.items():
        result = validation_loss(ctx.engine, loader, micro_batches, ctx.device)
        record: dict[str, Any] = {"iteration": state.iteration, "split": "valid"}
        if source is not None:
            record["source"] = source
        # "ppl" is the metrics.jsonl key.
        ctx.metrics.eval({**record, "loss": result.loss, "ppl": result.perplexity, "tokens": result.tokens})


def _save(ctx: TrainContext, state: TrainState) -> None:
    start = time.perf_counter()
    folder = save_checkpoint(
        ctx.engine, ctx.run, state, ctx.env, ctx.vocab_fingerprint, ctx.vocab_size, ctx.normalization
    )
    ctx.metrics.message(
        f"saved checkpoint {folder} at iteration {state.iteration} in {time.perf_counter() - start:.1f} s"
    )


def _save_unless_suspect(
    ctx: TrainContext, state: TrainState, window: LogWindow, guard: NonFiniteGuard, saved_at: int
) -> int:
    """Save, unless a non-finite update may have corrupted the weights: `latest` keeps naming the last
    good checkpoint. Returns the iteration of the newest checkpoint."""
    state.unlogged_losses = list(window.unlogged)  # carried by the checkpoint to the resumed run's first log
    if guard.weights_suspect:
        ctx.metrics.message(
            f"not saving at iteration {state.iteration}: an update from a non-finite loss "
            f"was applied; the newest checkpoint stays at iteration {saved_at}"
        )
        return saved_at
    _save(ctx, state)
    return state.iteration


def train(ctx: TrainContext, state: TrainState, stop: StopRequest, stop_flag: AnyRankFlag | None = None) -> Outcome:
    """Run from state.iteration to train_iters (or an earlier exit). Mutates and returns `state`.

    stop_flag: where the ranks agree on a stop request (default: a new one, which is collective: every rank
    calls train together); a caller that trains in several calls passes one to all of them."""
    t = ctx.run.train
    stop_flag = AnyRankFlag() if stop_flag is None else stop_flag
    window = LogWindow.resumed(state, t.log_interval, time.perf_counter())
    guard = NonFiniteGuard(t.max_nonfinite_steps)
    saved_at = state.iteration  # a resumed run starts from a saved checkpoint
    evaluated_at = None
    reason: StopReason = "completed"
    try:
        while state.iteration < t.train_iters:
            lr = engine_utils.current_lr(ctx.engine)  # the lr this step runs at
            loss_sum = train_step(ctx)
            state.iteration += 1
            state.consumed_samples += ctx.run.global_batch_size
            window.add(state.iteration, loss_sum, ctx.engine.was_step_applied())
            stop_requested = stop_flag.poll(stop.requested)

            iteration = state.iteration
            logging = iteration % t.log_interval == 0
            evaluating = bool(t.eval_interval and iteration % t.eval_interval == 0)
            saving = bool(t.save and t.save_interval and iteration % t.save_interval == 0)
            exiting = bool(t.exit_interval and iteration % t.exit_interval == 0)
            if not (logging or evaluating or saving or exiting or stop_requested or iteration == t.train_iters):
                continue  # the common step: nothing read back from the device
            window.read(ctx, guard)
            if logging:
                _log_train(ctx, state, window, lr)
                window.unlogged.clear()  # logged: a save from here on carries none of them to a resumed run
            paused = time.perf_counter()
            if evaluating:
                _evaluate(ctx, state)
                evaluated_at = iteration
            if saving:
                saved_at = _save_unless_suspect(ctx, state, window, guard, saved_at)
            if logging:  # the next window starts after the evaluation and the save: neither is training time
                window = LogWindow(time.perf_counter())
            else:
                window.started += time.perf_counter() - paused
            if stop_requested:
                reason = stop.signal_name or "SIGTERM"  # another rank got it first
                break
            if exiting:
                reason = "exit_interval"
                break
    finally:  # wait for the last poll's all-reduce: every rank that gets here started the same ones
        stop_flag.close()

    if reason == "completed" and evaluated_at != state.iteration:
        _evaluate(ctx, state)
    if t.save and saved_at != state.iteration:
        _save_unless_suspect(ctx, state, window, guard, saved_at)
    if reason != "completed":
        ctx.metrics.message(f"stopping at iteration {state.iteration} ({reason})")
    return Outcome(state, reason)
