"""The preprocessing worker pool's size and lifetime: no more workers than work or CPUs, none outliving the run.

Torch-free, like everything the workers import.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from megatron_zh.log import get_logger

logger = get_logger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_INTERVAL_S = 1.0
# Inputs whose size on disk says nothing about how many chunks of text they hold.
_PACKED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".tar", ".tgz", ".parquet")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a cgroup or `taskset` limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def estimated_chunks(files: Sequence[Path], chunk_bytes: int) -> int | None:
    """Most chunks the reader can cut from `files`, or None when a packed input hides its text size."""
    if any(str(path).lower().endswith(_PACKED_SUFFIXES) for path in files):
        return None
    # Each chunk takes whole lines of at least `chunk_bytes` (but the file's last), so never more.
    return sum(max(1, math.ceil(path.stat().st_size / chunk_bytes)) for path in files)


def plan_workers(requested: int, files: Sequence[Path], chunk_bytes: int) -> int:
    """`requested`, capped at the chunks there are to encode and the CPUs there are to encode them on.

    More processes than either only costs memory and start-up (1000 forks of the tokenizer for a
    one-chunk file took a minute and 10 GB).
    """
    cpus = available_cpus()
    chunks = estimated_chunks(files, chunk_bytes)
    workers = min(requested, cpus, chunks if chunks is not None else requested)
    if workers < requested:
        limits = [f"{cpus} CPU(s) available"] + ([f"{chunks} chunk(s) of input"] if chunks is not None else [])
        logger.info("--workers %d capped at %d (%s)", requested, workers, ", ".join(limits))
    return max(1, workers)


def die_with_parent(parent_pid: int) -> None:
    """Make this worker die when `parent_pid` does, even by SIGKILL (which no handler in the parent sees).

    Linux: prctl(PR_SET_PDEATHSIG, SIGKILL). Elsewhere, or if that fails: a thread that polls the
    parent's pid and exits when the worker has been re-parented.
    """
    if not _set_parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, interval_s: float = WATCHDOG_INTERVAL_S) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os._exit(1)  # no cleanup to do: a worker writes nothing, the parent owns every output
