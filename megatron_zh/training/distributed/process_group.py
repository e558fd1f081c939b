"""Where this process sits in the job, and the process group (NCCL on GPUs, gloo on CPU).

Three ways a rank gets started, all ending in the torch.distributed `env://` variables:
- the `deepspeed` launcher (or torchrun) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT;
- `srun` under SLURM sets SLURM_PROCID/NTASKS/LOCALID, mapped here (MASTER_ADDR: the batch script's, else
  the first node of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST);
- a plain `python pretrain_gpt.py` is a world of one: we fill in the rendezvous ourselves, on a
  free local port so that concurrent runs on one machine do not collide.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from megatron_zh.errors import ConfigError
from megatron_zh.training.distributed import fail_fast, slurm
from megatron_zh.training.distributed.extension_lock import check_deepspeed_shm_lock

LaunchedBy = Literal["launcher", "slurm", "single"]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launched_by: LaunchedBy

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _int_env(environ: MutableMapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ConfigError(f"environment variable {name}={environ[name]!r} is not an integer") from None


def setup_rendezvous_env(local_rank_arg: int | None = None, environ: MutableMapping[str, str] = os.environ) -> DistEnv:
    """Fill in RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT where no launcher did, and describe the rank."""
    launched_by: LaunchedBy
    if "RANK" in environ and "WORLD_SIZE" in environ:
        launched_by = "launcher"
        if "LOCAL_RANK" not in environ:
            environ["LOCAL_RANK"] = str(local_rank_arg if local_rank_arg is not None else 0)
    elif int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in environ:
        launched_by = "slurm"
        environ["RANK"] = environ["SLURM_PROCID"]
        environ["WORLD_SIZE"] = environ["SLURM_NTASKS"]
        environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in environ:
            address = slurm.master_addr(environ)  # the step's first node, where srun puts task 0
            if address is None:
                raise ConfigError(
                    "running under srun without MASTER_ADDR or SLURM_JOB_NODELIST: export "
                    "MASTER_ADDR=<first node's hostname> in the batch script (see launch/slurm.sbatch)"
                )
            environ["MASTER_ADDR"] = address
        environ.setdefault("MASTER_PORT", "29500")
        # SLURM_NTASKS_PER_NODE may read "8" or "8(x2)"; the local world size is its leading number.
        per_node = environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        if per_node.isdigit():
            environ.setdefault("LOCAL_WORLD_SIZE", per_node)
    else:
        launched_by = "single"
        environ["RANK"] = "0"
        environ["WORLD_SIZE"] = "1"
        environ["LOCAL_RANK"] = str(local_rank_arg if local_rank_arg is not None else 0)
        environ.setdefault("MASTER_ADDR", "127.0.0.1")
        environ.setdefault("MASTER_PORT", str(free_port()))
    rank, world_size = _int_env(environ, "RANK"), _int_env(environ, "WORLD_SIZE")
    local_rank = _int_env(environ, "LOCAL_RANK")
    # deepspeed's launcher exports LOCAL_SIZE, torchrun LOCAL_WORLD_SIZE.
    local_world_size = int(environ.get("LOCAL_WORLD_SIZE", environ.get("LOCAL_SIZE", world_size)))
    if not (0 <= rank < world_size and 0 <= local_rank < max(local_world_size, 1)):
        raise ConfigError(
            f"inconsistent rank environment: RANK={rank} WORLD_SIZE={world_size} "
            f"LOCAL_RANK={local_rank} local world size {local_world_size}"
        )
    return DistEnv(rank, world_size, local_rank, local_world_size, launched_by)


def set_cpu_threads(env: DistEnv, environ: MutableMapping[str, str] = os.environ) -> int:
    """On CPU, share the cores among the ranks of this machine instead of each rank taking them all.

    Oversubscribed ranks (every rank running one thread per core) are several times slower than
    ranks that split the cores. OMP_NUM_THREADS, when set, wins.
    """
    if "OMP_NUM_THREADS" in environ:
        threads = int(environ["OMP_NUM_THREADS"])
    else:
        threads = max(1, (os.cpu_count() or 1) // max(env.local_world_size, 1))
    torch.set_num_threads(threads)
    return threads


def init_process_group(env: DistEnv, timeout_minutes: float = 10.0) -> str:
    """Initialise torch.distributed through DeepSpeed (which also sets up its comm layer). Returns the backend.

    `timeout_minutes` (--distributed-timeout-minutes) bounds the rendezvous and every collective of
    every group, so that the survivors of a dead or hung rank fail instead of waiting (see fail_fast).
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cuda":
        accelerator.set_device(env.local_rank)
        backend = accelerator.communication_backend_name()  # nccl
    else:
        # DeepSpeed's CPU accelerator prefers oneCCL when installed; plain torch has gloo everywhere.
        backend = "gloo"
        # init_distributed JIT-loads its shared-memory op first, and waits forever on the build lock a killed
        # build left: every rank checks it, since every rank would wait (no process group yet to time out).
        check_deepspeed_shm_lock()
    timeout = timedelta(minutes=timeout_minutes)
    fail_fast.set_nccl_fail_fast_env()
    fail_fast.set_default_group_timeout(timeout)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)
    release_shm_allreduce_name(env)
    return backend


SHM_DIR = Path("/dev/shm")


def shm_allreduce_path(env: DistEnv, environ: MutableMapping[str, str] = os.environ) -> Path:
    """Where DeepSpeed's CPU comm op puts this rank's 66 MB all-reduce buffer (shm.cpp's naming)."""
    address, port = environ.get("MASTER_ADDR", ""), environ.get("MASTER_PORT", "")
    return SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{env.rank}"


def release_shm_allreduce_name(env: DistEnv) -> bool:
    """Unlink this rank's DeepSpeed shared-memory all-reduce buffer once every rank has mapped it.

    On CPU, when all ranks share a machine, DeepSpeed creates one shm segment per rank and never
    unlinks it: every run, even a clean one, leaves 66 MB per rank in /dev/shm (RAM) until reboot,
    and a day of short runs fills memory. After the barrier every peer holds its mapping, so
    dropping the name frees nothing in use now and lets the kernel reclaim it when the job ends,
    however the job ends. Returns whether there was a name to drop.
    """
    barrier()  # each rank opens its peers' segments inside init_distributed; none may vanish before that
    path = shm_allreduce_path(env)
    try:
        path.unlink()
    except FileNotFoundError:
        return False  # GPU accelerators, multi-node jobs, or a DeepSpeed without the op
    return True


def all_reduce_sum(values: list[float | torch.Tensor], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks in one collective, in float64 (a no-op without a process group)."""
    tensor = torch.stack(
        [
            v.detach().reshape(()).to(device=device, dtype=torch.float64)
            if torch.is_tensor(v)
            else torch.tensor(float(v), dtype=torch.float64, device=device)
            for v in values
        ]
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


class AnyRankFlag:
    """Whether a flag (a stop request) is set on any rank, agreed at every poll without the host waiting for
    the device or for another rank.

    poll(flag) starts an all-reduce of this rank's flag from host memory (a numpy buffer), asynchronously,
    over a gloo group of its own, and answers with the all-reduce the previous poll started: every rank gets
    the same answer at the same poll, one poll late, and by then that all-reduce has long finished. Created
    on every rank together (the group is collective). close() waits for the last all-reduce and answers it;
    polling may go on after it (a fresh start, no answer pending)."""

    def __init__(self) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self._group = torch.distributed.new_group(backend="gloo") if distributed else None
        self._distributed = distributed
        self._pending: tuple[Any, np.ndarray] | None = None

    def poll(self, flag: bool) -> bool:
        answer = self.close()
        buffer = np.array([1.0 if flag else 0.0])
        work = None
        if self._distributed:
            work = torch.distributed.all_reduce(torch.from_numpy(buffer), group=self._group, async_op=True)
        self._pending = (work, buffer)
        return answer

    def close(self) -> bool:
        """The answer to the last poll (False if none is pending)."""
        if self._pending is None:
            return False
        (work, buffer), self._pending = self._pending, None
        if work is not None:
            work.wait()
        return bool(buffer[0] > 0)


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
