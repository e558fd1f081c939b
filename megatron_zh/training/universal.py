"""Resuming on a different data-parallel size, through DeepSpeed's universal checkpoints.

ZeRO-1/2 partition the fp32 master weights and both Adam moments over the data-parallel ranks, and
DeepSpeed's normal load only reads a checkpoint back on the number of ranks that wrote it ("The
checkpoint being loaded used a DP world size of 2 but the current world size is 1 ..."). DeepSpeed's
own answer is the *universal checkpoint*: `deepspeed.checkpoint.ds_to_universal` merges the shards
into one folder per parameter (fp32, exp_avg, exp_avg_sq, step) and the engine, with
`"checkpoint": {"load_universal": true}`, cuts from those the partition each new rank owns. We use
exactly that machinery; nothing here reshapes optimizer state by hand.

What `prepare_resume` does when a run resumes on M ranks a checkpoint written by N != M:

* every rank checks the checkpoint is whole (one optimizer file per saved rank) before anything heavy;
* rank 0 converts it ONCE into `<load>/global_stepK_universal/` (DeepSpeed's layout: the model-states
  file, our client state inside it, and `zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt`), working in
  a hidden temporary folder beside it and renaming the result into place, so a crash never leaves a
  half-written cache that looks complete; then it points `<load>/latest_universal` at it (DeepSpeed's
  own marker). The other ranks wait, and learn the outcome, at a broadcast;
* a second resume reuses the cache as long as the source files are unchanged (their names, sizes
  and modification times are recorded in `CACHE_MARKER` inside it);
* the engine loads the cache with load_universal on for that one load (`universal_loading`).

The step counters, the lr schedule and our client state (iteration, consumed_samples, RNG states)
ride along in the copied model-states file. The sampler hands out consumed_samples onwards in
global-batch steps whatever the world size, and deepspeed_config re-derives the gradient
accumulation from the recipe's global batch, so step k+1 draws the samples an uninterrupted run
would have drawn.

Random states are saved per global rank. On resume, rank r takes the state saved by rank r mod N:
shrinking, every remaining rank continues its own stream; growing, the new ranks repeat the stream
of an existing one. That is what a fresh run does anyway (every rank seeds the same generator; see
pretrain.seed_everything), and it keeps two resumes of one checkpoint on M ranks identical. Dropout
masks cannot match the uninterrupted run once samples move to other ranks; with dropout off
(--hidden-dropout 0 --attention-dropout 0) nothing in a step draws from them.

Storage: the cache's zero/ folder holds what the N optimizer files held (fp32 masters + moments,
without padding); its model-states file is a hard link to the checkpoint's where the filesystem allows
(a copy otherwise). It lives beside the checkpoint, so the load directory must be writable and, on
several nodes, shared (every rank reads the cache).

Trust: DeepSpeed's converter unpickles the checkpoint's files with weights_only=False, so
`convert_to_universal` first passes every file through the restricted unpickler
(checkpoint_safety.check_checkpoint_files; skipped under --trust-checkpoint). The cache it writes is
ours, and the model-states file in it is the checked one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from megatron_zh.checkpoint_safety import check_checkpoint_files
from megatron_zh.errors import CheckpointError
from megatron_zh.fileio import atomic_write, fsync_path, fsync_tree
from megatron_zh.log import get_logger
from megatron_zh.training.config import RunConfig
from megatron_zh.training.distributed import DistEnv
from megatron_zh.training.master_weights import _find_shards

if TYPE_CHECKING:  # checkpointing imports this module
    from megatron_zh.training.checkpointing import StartPoint

logger = get_logger(__name__)

UNIVERSAL_SUFFIX = "_universal"
LATEST_UNIVERSAL_FILE = "latest_universal"  # DeepSpeed's name: engine.load_checkpoint(tag=None) reads it
CACHE_MARKER = "megatron_zh_universal.json"  # written last inside a cache: what it was converted from
_CACHE_PATTERN = re.compile(r"^(global_step\d+)" + re.escape(UNIVERSAL_SUFFIX) + "$")


def universal_tag(tag: str) -> str:
    return tag + UNIVERSAL_SUFFIX


def rng_state_for_rank(rng_states: list[Any] | None, rank: int) -> Any | None:
    """The saved random state rank `rank` continues: the one rank `rank mod N` saved (module docstring)."""
    if not rng_states:
        return None
    return rng_states[rank % len(rng_states)]


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
    if int(run.deepspeed.get("zero_optimization", {}).get("stage", 0)) == 0:
        return start  # no ZeRO: the whole optimizer state is in the model-states file, for any world size
    folder = Path(start.directory) / start.tag
    shards = _find_shards(folder)  # CheckpointError when ranks are missing or two layouts are mixed
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


def remove_orphan_caches(directory: str | os.PathLike) -> list[Path]:
    """Delete universal caches whose source checkpoint is gone (pruned), and `latest_universal` if it
    named one. Rank 0 only. Returns what was removed."""
    directory = Path(directory)
    removed = []
    for path in directory.iterdir() if directory.is_dir() else ():
        match = _CACHE_PATTERN.match(path.name)
        if match and path.is_dir() and not (directory / match.group(1)).is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    latest = directory / LATEST_UNIVERSAL_FILE
    if latest.is_file() and not (directory / latest.read_text(encoding="utf-8").strip()).is_dir():
        latest.unlink()
    return removed


# ---------------------------------------------------------------------------------------- conversion


def source_files(folder: Path) -> dict[str, list[int]]:
    """{file name: [size, mtime_ns]} of the DeepSpeed files a conversion reads: what a cache is valid for."""
    return {
        path.name: [path.stat().st_size, path.stat().st_mtime_ns]
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name.endswith(".pt")
    }


def cache_is_valid(folder: Path, cache: Path) -> bool:
    marker = cache / CACHE_MARKER
    if not marker.is_file():
        return False  # an older tool's folder, or one DeepSpeed's converter left without our marker
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("source") == folder.name and recorded.get("files") == source_files(folder)


def convert_to_universal(folder: Path, cache: Path) -> float:
    """Convert checkpoint `folder` into the universal checkpoint `cache` with DeepSpeed's ds_to_universal,
    atomically; returns the seconds it took. Raises whatever DeepSpeed raises."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    check_checkpoint_files(folder)  # before DeepSpeed's converter unpickles them with weights_only=False
    began = time.perf_counter()
    files = source_files(folder)
    for stale in folder.parent.glob(f".{cache.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a conversion that was killed
    # The staging folder is the output's parent, so DeepSpeed's own `latest_universal` lands (and dies) there.
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", suffix=".tmp", dir=folder.parent))
    try:
        output = staging / cache.name
        args = argparse.Namespace(
            input_folder=str(folder),
            output_folder=str(output),
            # Serial: worker processes would be forked from a rank that holds a process group (and CUDA).
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # our checkpoints carry no universal_checkpoint_info (no TP/PP)
        )
        chatter = io.StringIO()  # its progress bars and prints; shown only when it fails
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                ds_to_universal(args)
        except BaseException:
            logger.debug("ds_to_universal output:\n%s", chatter.getvalue())
            raise
        _link_model_states(folder, output)
        seconds = time.perf_counter() - began
        marker = {"source": folder.name, "files": files, "seconds": round(seconds, 3), **_versions()}
        (output / CACHE_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        fsync_tree(output)
        if cache.exists():  # stale (its source changed): move it aside, then put the new one in its place
            os.rename(cache, staging / "stale")
        os.rename(output, cache)
        fsync_path(cache.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with atomic_write(cache.parent / LATEST_UNIVERSAL_FILE) as f:
        f.write(cache.name)
    return time.perf_counter() - began


def _link_model_states(folder: Path, output: Path) -> None:
    """ds_to_universal copies the model-states file (a quarter of an fp32 checkpoint) unchanged; a hard link
    to the source holds the same bytes without the disk. Kept as a copy where links are not possible."""
    for copy in output.glob("*model_states.pt"):
        source = folder / copy.name
        if not source.is_file() or source.stat().st_size != copy.stat().st_size:
            continue
        link = copy.with_name(copy.name + ".link")
        try:
            os.link(source, link)
        except OSError:
            continue  # another filesystem, or one without hard links
        os.replace(link, copy)


def _convert_or_reuse(folder: Path, cache: Path, saved: int, ranks: int, advice: str) -> dict[str, Any] | str:
    """Rank 0's part: {"message": ...} on success, else the error line (so it can be broadcast)."""
    what = f"checkpoint {folder} was written by {saved} rank(s), this run has {ranks}"
    if cache_is_valid(folder, cache):
        return {"message": f"{what}: loading its universal checkpoint (DeepSpeed) cached at {cache}"}
    try:
        seconds = convert_to_universal(folder, cache)
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


def _versions() -> dict[str, str]:
    import deepspeed

    return {"deepspeed": deepspeed.__version__, "torch": torch.__version__}
