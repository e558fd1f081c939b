"""A checkpoint as a DeepSpeed universal checkpoint, cached beside it: how a run resumes on another number of ranks.

ZeRO-1/2 partition the fp32 master weights and both Adam moments over the data-parallel ranks, and
DeepSpeed's normal load only reads a checkpoint back on the number of ranks that wrote it ("The
checkpoint being loaded used a DP world size of 2 but the current world size is 1 ..."). DeepSpeed's
own answer is the *universal checkpoint*: `deepspeed.checkpoint.ds_to_universal` merges the shards
into one folder per parameter (fp32, exp_avg, exp_avg_sq, step) and the engine, with
`"checkpoint": {"load_universal": true}`, cuts from those the partition each new rank owns. We use
exactly that machinery; nothing here reshapes optimizer state by hand. (When a run converts and
loads, and how the ranks agree on it: training/checkpointing/resume.py.)

The cache, `<load>/global_stepK_universal/`, is DeepSpeed's layout: the model-states file, our
client state inside it, and `zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt`. It is built in a
hidden temporary folder beside it and renamed into place, so a crash never leaves a half-written
cache that looks complete; then `<load>/latest_universal` (DeepSpeed's own marker) names it. It is
reused as long as the source files are unchanged (their names, sizes and modification times are
recorded in `CACHE_MARKER` inside it).

Storage: the cache's zero/ folder holds what the N optimizer files held (fp32 masters + moments,
without padding); its model-states file is a hard link to the checkpoint's where the filesystem allows
(a copy otherwise). It lives beside the checkpoint, so the load directory must be writable and, on
several nodes, shared (every rank reads the cache).

Trust: DeepSpeed's converter unpickles the checkpoint's files with weights_only=False, so
`convert_to_universal` first passes every file through the restricted unpickler
(safety.check_checkpoint_files; skipped under --trust-checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from megatron_zh.checkpoint.layout import LATEST_UNIVERSAL_FILE, UNIVERSAL_PATTERN
from megatron_zh.checkpoint.safety import check_checkpoint_files
from megatron_zh.fileio import atomic_write, fsync_path, fsync_tree, loads_json
from megatron_zh.log import get_logger

logger = get_logger(__name__)

CACHE_MARKER = "megatron_zh_universal.json"  # written last inside a cache: what it was converted from


def remove_orphan_caches(directory: str | os.PathLike) -> list[Path]:
    """Delete universal caches whose source checkpoint is gone (pruned), and `latest_universal` if it
    named one. Rank 0 only. Returns what was removed."""
    directory = Path(directory)
    removed = []
    for path in directory.iterdir() if directory.is_dir() else ():
        match = UNIVERSAL_PATTERN.match(path.name)
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
        recorded = loads_json(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
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


def _versions() -> dict[str, str]:
    import deepspeed

    return {"deepspeed": deepspeed.__version__, "torch": torch.__version__}
