"""Resuming: the checkpoint `start` names loaded into the engine, on any number of ranks.

On the number of ranks that wrote it, DeepSpeed loads it as it is. On another number of ranks
(M ranks resuming a checkpoint written by N), `prepare_resume` goes through a DeepSpeed universal
copy of it (checkpoint/universal.py):

* every rank checks the checkpoint is whole (one optimizer file per saved rank) before anything heavy;
* rank 0 converts it ONCE into `<load>/global_stepK_universal/`, or reuses the cache when its source
  files are unchanged; either way every file of the cache passes the restricted unpickler first
  (DeepSpeed's universal loader reads them with weights_only=False, and a cached file is no more
  trusted than any other); the other ranks wait, and learn the outcome, at a broadcast;
* the engine loads the cache with load_universal on for that one load (`universal_loading`).

The step counters, the lr schedule and our client state (iteration, consumed_samples, RNG states)
ride along in the copied model-states file. The sampler hands out consumed_samples onwards in
global-batch steps whatever the world size, and deepspeed_config re-derives the gradient
accumulation from the recipe's global batch, so step k+1 draws the samples an uninterrupted run
would have drawn. Which random state each rank continues: rng.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from megatron_zh.checkpoint.client_state import ClientState
from megatron_zh.checkpoint.layout import find_shards, universal_tag
from megatron_zh.checkpoint.master_weights import read_fp32_weights, set_fp32_masters
from megatron_zh.checkpoint.safety import check_checkpoint_files, guard_engine_loads
from megatron_zh.checkpoint.universal import cache_is_valid, convert_to_universal, remove_orphan_caches
from megatron_zh.errors import CheckpointError
from megatron_zh.log import get_logger
from megatron_zh.training.checkpointing.rng import RngState, rng_state_for_rank
from megatron_zh.training.checkpointing.start import StartPoint, TrainState
from megatron_zh.training.config.run_config import RunConfig
from megatron_zh.training.distributed.process_group import DistEnv

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

logger = get_logger(__name__)


def saved_world_size(start: StartPoint) -> int | None:
    """Data-parallel ranks that wrote the checkpoint `start` names (its client state's world_size)."""
    return None if start.info is None else start.info.world_size


def prepare_resume(start: StartPoint, run: RunConfig, env: DistEnv) -> StartPoint:
    """`start`, or, when it resumes a ZeRO checkpoint written by another number of ranks, `start` pointing
    at a universal copy of it (converted now on rank 0, or reused). Call on every rank, after the process
    group is up and before the engine loads. Raises CheckpointError (on every rank) when that is impossible.
    """
    if start.mode != "resume" or start.directory is None or start.tag is None:
        return start  # scratch, or finetune: weights only, which DeepSpeed loads on any number of ranks
    if run.zero_stage == 0:
        return start  # no ZeRO: the whole optimizer state is in the model-states file, for any world size
    folder = Path(start.directory) / start.tag
    shards = find_shards(folder)  # CheckpointError when ranks are missing or two layouts are mixed
    saved = saved_world_size(start) or len(shards)
    if saved == env.world_size:
        return start
    advice = f"resume on {saved} rank(s), or start from its weights only with --finetune"
    if not shards:
        raise CheckpointError(
            f"{folder} was written by {saved} rank(s), this run has {env.world_size}, and it holds no ZeRO "
            f"optimizer files to re-partition; {advice}"
        )
    if len(shards) != saved:
        raise CheckpointError(
            f"{folder} was written by {saved} rank(s) but holds optimizer files for {len(shards)}; the "
            "checkpoint is incomplete: resume from an earlier one"
        )
    cache = folder.parent / universal_tag(start.tag)
    outcome: list[Any] = [None]
    if env.is_main:
        outcome[0] = _convert_or_reuse(folder, cache, saved, env.world_size, advice)
    if env.world_size > 1:
        # The others wait here while rank 0 converts, and learn whether it worked (else they would hang
        # in the engine's first collective while rank 0 reports the error).
        torch.distributed.broadcast_object_list(outcome, src=0)
    result = outcome[0]
    if isinstance(result, str):
        raise CheckpointError(result)
    if env.is_main:
        logger.info("%s", result["message"])
    return dataclasses.replace(start, universal=cache.name)


@contextlib.contextmanager
def universal_loading(engine: Any, start: StartPoint) -> Iterator[None]:
    """Turn DeepSpeed's load_universal on for the load of `start` when it names a universal copy (and only
    for that load); turn DeepSpeed's failures there into one CheckpointError line."""
    if start.universal is None:
        yield
        return
    config = engine._config  # DeepSpeedConfig; engine.load_universal_checkpoint() reads this attribute
    if not hasattr(config, "load_universal_checkpoint"):
        raise CheckpointError(
            "this DeepSpeed has no load_universal_checkpoint setting; resume on the number of ranks that "
            "wrote the checkpoint"
        )
    before = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:  # DeepSpeed asserts and raises many types on a cache it cannot read
        raise CheckpointError(
            f"DeepSpeed could not load the universal checkpoint {start.directory}/{start.universal} "
            f"({type(exc).__name__}: {exc}); delete that folder to convert again, or resume on the "
            "number of ranks that wrote the checkpoint"
        ) from exc
    finally:
        config.load_universal_checkpoint = before


def _convert_or_reuse(folder: Path, cache: Path, saved: int, ranks: int, advice: str) -> dict[str, Any] | str:
    """Rank 0's part: {"message": ...} on success, else the error line (so it can be broadcast)."""
    what = f"checkpoint {folder} was written by {saved} rank(s), this run has {ranks}"
    if cache_is_valid(folder, cache):
        try:  # DeepSpeed's universal loader unpickles these with weights_only=False: cached is not trusted
            check_checkpoint_files(cache)
        except CheckpointError as exc:
            return f"{exc} (it is in the universal copy cached at {cache}: delete that folder to convert again)"
        return {"message": f"{what}: loading its universal checkpoint (DeepSpeed) cached at {cache}"}
    try:
        seconds = convert_to_universal(folder, cache)
        check_checkpoint_files(cache)
    except CheckpointError as exc:
        return str(exc)
    except OSError as exc:
        return f"{what}; cannot write its universal checkpoint beside it ({exc}); make {folder.parent} writable"
    except Exception as exc:  # DeepSpeed's converter asserts, and raises many types, on what it cannot convert
        return (
            f"{what}; DeepSpeed could not convert it to a universal checkpoint ({type(exc).__name__}: {exc}); {advice}"
        )
    remove_orphan_caches(folder.parent)
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and p.stat().st_nlink == 1) / 2**20
    return {
        "message": f"{what}: converted it to a universal checkpoint (DeepSpeed) in {seconds:.1f} s, "
        f"{size:.1f} MB cached at {cache}"
    }


def load_checkpoint(engine: DeepSpeedEngine, start: StartPoint, env: DistEnv) -> tuple[TrainState, RngState | None]:
    """Load what `start` says into the engine. Returns the counters and this rank's RNG state to restore
    (None when the run starts fresh: finetune, or a checkpoint without random states)."""
    if start.mode == "scratch" or start.directory is None or start.tag is None:
        return TrainState(), None
    finetune = start.mode == "finetune"
    guard_engine_loads(engine)  # DeepSpeed unpickles with weights_only=False: give it the restricted loader
    with universal_loading(engine, start):
        path, client = engine.load_checkpoint(
            start.directory,
            tag=start.universal or start.tag,
            load_module_only=finetune,
            load_optimizer_states=not finetune,
            load_lr_scheduler_states=not finetune,
        )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {start.directory}/{start.tag}")
    if finetune:
        if any(p.dtype != torch.float32 for p in engine.module.parameters()):
            # DeepSpeed refreshed the fp32 masters from the bf16/fp16 module: take the checkpoint's own.
            weights, source = read_fp32_weights(start.folder)
            count = set_fp32_masters(engine, weights)
            logger.info("fp32 master weights of %d parameters set from %s (%s)", count, path, source)
        logger.info("initialised the weights from %s (fresh optimizer, schedule and sample counter)", path)
        return TrainState(), None
    saved = ClientState.from_dict(client, str(path))
    state = TrainState(
        iteration=saved.iteration,
        consumed_samples=saved.consumed_samples,
        unlogged_losses=list(saved.unlogged_losses or []),
    )
    # DeepSpeed restores the scheduler's step count; make the optimizer's lr agree with it now rather than
    # after the first step, so step N+1 runs at exactly the lr the uninterrupted run used.
    scheduler = engine.lr_scheduler
    if scheduler is not None and hasattr(scheduler, "last_batch_iteration"):
        scheduler.step(scheduler.last_batch_iteration)
    rng_states = saved.rng_states or []
    rng = rng_state_for_rank(rng_states, env.rank)  # rank r continues rank r mod N's stream (rng.py)
    if rng is None:
        logger.warning("checkpoint %s holds no random states: they stay as seeded", path)
    elif len(rng_states) != env.world_size:
        logger.info(
            "checkpoint %s holds the random states of %d rank(s), this run has %d: rank r continues "
            "the stream of saved rank r mod %d",
            path,
            len(rng_states),
            env.world_size,
            len(rng_states),
        )
    logger.info("resumed %s at iteration %d, %d samples consumed", path, state.iteration, state.consumed_samples)
    return state, rng
