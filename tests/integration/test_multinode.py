"""Multi-node on one machine: 2 "nodes" started the two ways a cluster starts them, and what a lost rank does.

- DeepSpeed's launcher without ssh: `launch/multinode.sh` run once per node with NODE_RANK, as on a
  cluster where each node starts its own share (`deepspeed --no_ssh --node_rank N`);
- srun: each rank a plain `python pretrain_gpt.py` with the variables srun sets (SLURM_PROCID,
  SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST), and no MASTER_ADDR, which comes from the node list.

Both must give the losses of a one-node run with as many ranks, bit for bit; a rank killed with
SIGKILL must end the whole job, non-zero, within a minute; and under srun, where nothing watches the
ranks, a rank that hangs must be given up on after --distributed-timeout-minutes. Every rank runs one
thread (OMP_NUM_THREADS=1): a one-node run would otherwise split the cores differently from a
two-node one, and a matmul's summation order, so its last bits, depend on the thread count.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from training_runs import REPO_ROOT, deepspeed_command, environment, pretrain_args

from megatron_zh.errors import ConfigError
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.distributed.fail_fast import (
    ASYNC_ERROR_HANDLING,
    LEGACY_ASYNC_ERROR_HANDLING,
    set_nccl_fail_fast_env,
)
from megatron_zh.training.distributed.process_group import free_port, setup_rendezvous_env
from megatron_zh.training.distributed.slurm import first_host, master_addr
from megatron_zh.training.metrics import read_metrics

STEPS = 3
SHORT = dict(train_iters=STEPS, log_interval=1, eval_interval=0, save_interval=0, num_workers=0)
LONG = dict(SHORT, train_iters=500)  # runs that are killed long before they end
DEEPSPEED = deepspeed_command()[0]
# The launcher wants one hostfile line per node: two spellings of this machine. The first is the
# rendezvous address multinode.sh derives; on 2 real nodes these are the nodes' hostnames.
HOSTFILE_NAMES = ("127.0.0.1", "localhost")
# What a launcher or an outer job could have left in the test's environment and would change the run.
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------------------- starting "nodes"


def node_environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in environment().items() if k not in RENDEZVOUS_VARIABLES and not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"
    env.update(variables)
    return env


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def launcher_nodes(args: list[str], tmp_path: Path, ranks_per_node: int) -> list[subprocess.Popen]:
    """`NODE_RANK=n launch/multinode.sh ARGS` for n = 0, 1: what an operator types on each node."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{name} slots={ranks_per_node}\n" for name in HOSTFILE_NAMES))
    script, config_flag, config, *flags = args  # multinode.sh adds the script and --ds_config $DS_CONFIG
    assert (script, config_flag) == ("pretrain_gpt.py", "--ds_config")
    shared = dict(HOSTFILE=str(hostfile), DS_CONFIG=config, MASTER_PORT=str(free_port()), DEEPSPEED=DEEPSPEED)
    return [
        spawn(
            ["bash", "launch/multinode.sh", *flags],
            node_environment(NODE_RANK=str(node), **shared),
            tmp_path / f"node{node}.log",
        )
        for node in range(2)
    ]


def srun_tasks(args: list[str], tmp_path: Path, ranks_per_node: int) -> list[subprocess.Popen]:
    """One `python pretrain_gpt.py ARGS` per task with srun's variables (block distribution, 2 nodes)."""
    world = 2 * ranks_per_node
    shared = dict(
        SLURM_NTASKS=str(world),
        SLURM_NTASKS_PER_NODE=str(ranks_per_node),
        SLURM_JOB_NODELIST="127.0.0.[1-2]",  # two loopback addresses; the first hosts the rendezvous
        MASTER_PORT=str(free_port()),  # the batch script's job (slurm.sbatch); here a free one
    )
    tasks = []
    for rank in range(world):
        env = node_environment(
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank % ranks_per_node),
            SLURM_NODEID=str(rank // ranks_per_node),
            **shared,
        )
        tasks.append(spawn([sys.executable, *args], env, tmp_path / f"task{rank}.log"))
    return tasks


START: dict[str, Callable[[list[str], Path, int], list[subprocess.Popen]]] = {
    "launcher": launcher_nodes,
    "srun": srun_tasks,
}


def tree(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        parent = psutil.Process(process.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_all(processes: list[subprocess.Popen]) -> None:
    """SIGKILL each started process and its descendants, by pid (launchers put ranks in groups of their own)."""
    victims = [p for process in processes for p in tree(process)]
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=10)
    for process in processes:
        process.wait(timeout=10)


def logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(tmp_path.glob("*.log")))


def wait_all(processes: list[subprocess.Popen], timeout: float, tmp_path: Path) -> list[int]:
    """The exit statuses, once every process has ended; fails (after killing them) past `timeout`."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in processes):
        if time.monotonic() > deadline:
            kill_all(processes)
            raise AssertionError(f"still running after {timeout:.0f} s:\n{logs(tmp_path)}")
        time.sleep(0.1)
    return [p.returncode for p in processes]


def train_losses(save: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(save / "metrics.jsonl")]


def rank_process(processes: list[subprocess.Popen], rank: int) -> psutil.Process:
    """The pretrain_gpt.py process of a global rank: RANK from a launcher, SLURM_PROCID from srun."""
    for process in processes:
        for candidate in tree(process):
            try:
                if "pretrain_gpt.py" not in " ".join(candidate.cmdline()):
                    continue
                env = candidate.environ()
            except psutil.Error:
                continue
            if str(rank) in (env.get("RANK"), env.get("SLURM_PROCID")):
                return candidate
    raise AssertionError(f"no process of rank {rank}")


# --------------------------------------------------------------------------- same losses as one node


@pytest.fixture(scope="module")
def one_node(zh_text_document, tmp_path_factory) -> Callable[[int], list[float]]:
    """Losses of one-node runs (`deepspeed --num_gpus N`), by world size, computed on first use."""
    cache: dict[int, list[float]] = {}

    def losses(world: int) -> list[float]:
        if world not in cache:
            save = tmp_path_factory.mktemp(f"one_node_{world}")
            command = [*deepspeed_command(world), *pretrain_args(zh_text_document, save / "run", **SHORT)]
            result = subprocess.run(
                command, cwd=REPO_ROOT, env=node_environment(), capture_output=True, text=True, timeout=600
            )
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
            cache[world] = train_losses(save / "run")
            assert len(cache[world]) == STEPS
        return cache[world]

    return losses


# srun with 2 ranks a node: the local ranks and local world size are our mapping of SLURM_LOCALID and
# SLURM_NTASKS_PER_NODE; under the launcher they are DeepSpeed's.
@pytest.mark.parametrize(("mode", "ranks_per_node"), [("launcher", 1), ("srun", 2)])
def test_two_nodes_give_the_losses_of_one(mode, ranks_per_node, one_node, zh_text_document, tmp_path) -> None:
    save = tmp_path / "run"
    processes = START[mode](pretrain_args(zh_text_document, save, **SHORT), tmp_path, ranks_per_node)
    assert wait_all(processes, timeout=600, tmp_path=tmp_path) == [0] * len(processes), logs(tmp_path)
    assert f"rank 0/{2 * ranks_per_node}" in logs(tmp_path)
    assert train_losses(save) == one_node(2 * ranks_per_node)  # exact float equality: bit for bit


# --------------------------------------------------------------------------- a lost rank ends the job


def start_and_wait_for_training(mode: str, extra: dict, zh_text_document, tmp_path: Path) -> list[subprocess.Popen]:
    save = tmp_path / "run"
    processes = START[mode](pretrain_args(zh_text_document, save, **LONG, **extra), tmp_path, 1)
    deadline = time.monotonic() + 600
    while len(train_losses(save)) < 2:  # past start-up: both ranks are in the training loop
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            kill_all(processes)
            raise AssertionError(f"the job did not reach step 2:\n{logs(tmp_path)}")
        time.sleep(0.1)
    return processes


@pytest.mark.parametrize("mode", ["launcher", "srun"])
def test_a_killed_rank_ends_the_job(mode, zh_text_document, tmp_path) -> None:
    processes = start_and_wait_for_training(mode, {}, zh_text_document, tmp_path)
    try:
        victim = rank_process(processes, 1)  # on node 1: node 0 learns of it only through the network
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        statuses = wait_all(processes, timeout=60, tmp_path=tmp_path)
        elapsed = time.monotonic() - killed_at
    finally:
        kill_all(processes)
    print(f"{mode}: the job ended {elapsed:.1f} s after rank 1 was killed, statuses {statuses}")
    assert all(status != 0 for status in statuses), f"{statuses}\n{logs(tmp_path)}"


def test_a_hung_rank_is_given_up_on_after_the_timeout(zh_text_document, tmp_path) -> None:
    """srun: rank 1 stops (SIGSTOP: its sockets stay open, as with a node lost to the network).

    Nothing notices but the process group's timeout; with --distributed-timeout-minutes 0.25 rank 0
    must fail within a minute (with the default of 10 it would wait 10 minutes). Under real srun,
    --kill-on-bad-exit then ends the stopped task; here the test does.
    """
    processes = start_and_wait_for_training("srun", {"distributed_timeout_minutes": 0.25}, zh_text_document, tmp_path)
    try:
        victim = rank_process(processes, 1)
        stopped_at = time.monotonic()
        victim.send_signal(signal.SIGSTOP)
        status = wait_all(processes[:1], timeout=60, tmp_path=tmp_path)[0]
        elapsed = time.monotonic() - stopped_at
    finally:
        kill_all(processes)
    print(f"srun: rank 0 gave up {elapsed:.1f} s after rank 1 hung")
    assert status != 0, logs(tmp_path)
    # gloo's "Timed out waiting 15000ms for recv operation": the timeout, not some other failure, ended it.
    assert "timed out" in (tmp_path / "task0.log").read_text().lower(), logs(tmp_path)


# --------------------------------------------------------------------------- the pieces, without training


def test_launch_script_needs_a_node_rank_without_ssh(tmp_path) -> None:
    env = node_environment(NO_SSH="1", HOSTFILE=str(tmp_path / "hostfile"), MASTER_ADDR="127.0.0.1")
    result = subprocess.run(["bash", "launch/multinode.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "needs NODE_RANK" in result.stderr


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("node7", "node7"),
        ("node7,node3", "node7"),
        ("gpu[007-009,012],cpu1", "gpu007"),
        ("gpu[012,007-009]", "gpu012"),  # the list's order, not sorted
        ("rack[2-3]-node[01-04]", "rack2-node01"),
        ("127.0.0.[1-2]", "127.0.0.1"),
    ],
)
def test_first_host_of_a_slurm_node_list(nodelist: str, first: str) -> None:
    assert first_host(nodelist) == first


def test_srun_rendezvous_address_comes_from_the_node_list() -> None:
    environ = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[003-004]"}
    env = setup_rendezvous_env(None, environ)
    assert (env.rank, env.world_size, environ["MASTER_ADDR"]) == (1, 2, "gpu003")
    # The step's own node list wins (a step may use part of the allocation); an exported MASTER_ADDR wins over both.
    assert master_addr({"SLURM_JOB_NODELIST": "gpu[003-004]", "SLURM_STEP_NODELIST": "gpu004"}) == "gpu004"
    exported = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu3", "MASTER_ADDR": "ib-gpu3"}
    setup_rendezvous_env(None, exported)
    assert exported["MASTER_ADDR"] == "ib-gpu3"
    with pytest.raises(ConfigError, match="node list"):
        first_host("gpu[1-2")


def test_nccl_fails_fast_unless_the_user_chose() -> None:
    environ: dict[str, str] = {}
    assert set_nccl_fail_fast_env(environ) == {ASYNC_ERROR_HANDLING: "1"}
    assert environ == {ASYNC_ERROR_HANDLING: "1"}  # torch 2.13 reads the new name; the old one would warn
    for chosen in ({ASYNC_ERROR_HANDLING: "3"}, {LEGACY_ASYNC_ERROR_HANDLING: "0"}, {"TORCH_NCCL_BLOCKING_WAIT": "1"}):
        environ = dict(chosen)
        assert set_nccl_fail_fast_env(environ) == {} and environ == chosen


def test_timeout_flag_defaults_to_megatrons_and_takes_fractions(tmp_path) -> None:
    from training_runs import CPU_CONFIG

    parse = build_parser().parse_args
    assert build_run_config(parse(["--ds_config", str(CPU_CONFIG)]), 2).train.distributed_timeout_minutes == 10
    args = parse(["--ds_config", str(CPU_CONFIG), "--distributed-timeout-minutes", "0.25"])
    assert build_run_config(args, 2).train.distributed_timeout_minutes == 0.25
    with pytest.raises(ConfigError, match="distributed_timeout_minutes must be a positive number"):
        build_run_config(parse(["--ds_config", str(CPU_CONFIG), "--distributed-timeout-minutes", "0"]), 2)


PROCESS_GROUP_PROBE = """
import json, os, torch
from megatron_zh.training.distributed.process_group import init_process_group, setup_rendezvous_env
from deepspeed.utils import groups
init_process_group(setup_rendezvous_env(None), timeout_minutes=0.05)
def timeout(group):
    return group._get_backend(torch.device("cpu")).options._timeout.total_seconds()
world = torch.distributed.distributed_c10d._get_default_group()
print(json.dumps({
    "world": timeout(world),
    "deepspeed_data_parallel": timeout(groups._get_data_parallel_group()),  # where ZeRO reduces gradients
    "new_group": timeout(torch.distributed.new_group([0])),
    "nccl_env": os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING"),
}))
"""


def test_every_process_group_gets_the_timeout_and_nccl_env() -> None:
    """A world of one (gloo): the default group, DeepSpeed's data-parallel group and any later group
    all time out after 3 s (0.05 minutes), and NCCL's error handling was set before the group existed."""
    env = node_environment()
    env.pop(ASYNC_ERROR_HANDLING, None)
    result = subprocess.run(
        [sys.executable, "-c", PROCESS_GROUP_PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe == {"world": 3.0, "deepspeed_data_parallel": 3.0, "new_group": 3.0, "nccl_env": "1"}
