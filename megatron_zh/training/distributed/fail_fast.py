"""A job that loses a rank must end, not hang: timeouts for every process group, NCCL's error handling.

When one rank dies (a crash, an OOM kill, a lost node), the others are usually blocked in a
collective waiting for it. With gloo on one machine the dead peer's sockets close and the
survivors fail at once; a peer that hangs, or a node that drops off the network without closing
its connections, is noticed only by the process group's timeout. Megatron's
`--distributed-timeout-minutes` (default 10) bounds that wait, and this module makes it hold for
every group of the job, not only the default one:

- `set_default_group_timeout`: `torch.distributed.new_group` without a `timeout` takes torch's
  built-in default (30 minutes for gloo, 10 for NCCL), not the default group's. DeepSpeed creates
  its data-parallel group (a clone of the world, which carries ZeRO's gradient reductions) that way,
  so without this the flag would not cover the collective a training step spends most time in.
- `set_nccl_fail_fast_env`: with NCCL a collective is asynchronous; the timeout is enforced by
  ProcessGroupNCCL's watchdog thread, which aborts the communicators and ends the process only when
  asynchronous error handling is on (the default since torch 2.2, off before; set explicitly here
  so the behaviour does not depend on the torch version or a site's environment).

TORCH_NCCL_BLOCKING_WAIT is deliberately not set: it makes the host block in every `wait()` until the
collective has finished, which serialises the CPU with each all-reduce and forfeits DeepSpeed's
overlap of gradient reduction with the backward pass; the watchdog above gives the same bound on a
hang at no cost per step. torch documents the two as alternatives, so a user who sets either
blocking-wait variable gets it, and asynchronous error handling is then left alone.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from datetime import timedelta

import torch
import torch.distributed.distributed_c10d as c10d

from megatron_zh.log import get_logger

logger = get_logger(__name__)

# The current name (torch >= 2.2) first; torch before 2.2 reads only the NCCL_ spelling, and torch from
# 2.2 warns once on every rank when it is set, so it is written only for a torch that needs it.
ASYNC_ERROR_HANDLING = "TORCH_NCCL_ASYNC_ERROR_HANDLING"
LEGACY_ASYNC_ERROR_HANDLING = "NCCL_ASYNC_ERROR_HANDLING"
BLOCKING_WAIT = ("TORCH_NCCL_BLOCKING_WAIT", "NCCL_BLOCKING_WAIT")
TEAR_DOWN = "1"  # abort the NCCL communicators, then end the process (ErrorHandlingMode::TearDown)


def _torch_before_2_2() -> bool:
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) < (2, 2)


def set_nccl_fail_fast_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Turn on NCCL's asynchronous error handling unless the user chose a mode. Returns what was set.

    Must run before the NCCL process group is created: ProcessGroupNCCL reads these once, then.
    Harmless for gloo, which ignores them.
    """
    chosen = (ASYNC_ERROR_HANDLING, LEGACY_ASYNC_ERROR_HANDLING, *BLOCKING_WAIT)
    if any(name in environ for name in chosen):
        return {}
    names = [ASYNC_ERROR_HANDLING] + ([LEGACY_ASYNC_ERROR_HANDLING] if _torch_before_2_2() else [])
    for name in names:
        environ[name] = TEAR_DOWN
    return {name: TEAR_DOWN for name in names}


def set_default_group_timeout(timeout: timedelta) -> None:
    """Make process groups created later without an explicit timeout (DeepSpeed's) use `timeout`.

    torch has no public setter: `new_group` reads these two module globals of distributed_c10d
    when its `timeout` is None (see `_get_default_timeout`; torch is pinned, and a test checks that a
    new group really gets the timeout). Should a torch rename them, the run still trains, and says so.
    """
    for name in ("default_pg_timeout", "default_pg_nccl_timeout"):
        if hasattr(c10d, name):
            setattr(c10d, name, timeout)
        else:
            logger.warning("torch.distributed has no %s: groups DeepSpeed creates keep torch's default timeout", name)
