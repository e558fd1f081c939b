"""Shared by the training tests: start pretrain_gpt.py the way users do and read what it wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from repo_paths import REPO_ROOT, SUPPORT

from megatron_zh.training.distributed.process_group import free_port

CPU_CONFIG = REPO_ROOT / "ds_configs" / "cpu_tiny.json"


def deepspeed_command(ranks: int = 2) -> list[str]:
    """`deepspeed --num_gpus N` from this interpreter's environment, on a free port (suites run in parallel)."""
    launcher = Path(sys.executable).parent / "deepspeed"
    return [
        str(launcher) if launcher.exists() else "deepspeed",
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
    ]


def pretrain_args(dataset: dict, save: Path, **flags) -> list[str]:
    """pretrain_gpt.py arguments: the CPU config, the shared corpus, `save` as --save/--load, then flags."""
    args = [
        "pretrain_gpt.py",
        "--ds_config",
        str(CPU_CONFIG),
        "--data-path",
        dataset["prefix"],
        "--vocab-file",
        dataset["vocab"],
        "--save",
        str(save),
        "--load",
        str(save),
    ]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        else:
            args += [flag, str(value)]
    return args


def merge(into: dict, changes: dict) -> None:
    """Deep update: {"optimizer": {"params": {"betas": ...}}} changes one parameter, keeping the others."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def write_config(tmp_path: Path, dataset: dict, deepspeed=None, *, drop: tuple[str, ...] = (), **pretrain) -> Path:
    """ds_configs/cpu_tiny.json on `dataset` (save = load = tmp/ckpt), written to tmp/config.json, with changes:
    `deepspeed` merged into the config (a dict, deep) or editing it (a callable); the top-level keys in `drop`
    removed; `pretrain` set in its "pretrain" section (a None value removes the key)."""
    import json

    config = json.loads(CPU_CONFIG.read_text())
    config["pretrain"].update(
        data_path=[dataset["prefix"]],
        vocab_file=dataset["vocab"],
        save=str(tmp_path / "ckpt"),
        load=str(tmp_path / "ckpt"),
    )
    if callable(deepspeed):
        deepspeed(config)
    else:
        merge(config, deepspeed or {})
    for key in drop:
        config.pop(key, None)
    config["pretrain"].update(pretrain)
    config["pretrain"] = {k: v for k, v in config["pretrain"].items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


# A few small steps (32 tokens, 2 per rank): for runs whose cost is elsewhere (interpreted kernels, compiling).
SMALL_STEPS = dict(
    seq_length=32, micro_batch_size=2, global_batch_size=4, log_interval=1, eval_interval=0, eval_iters=1
)

# A short --finetune run whose step 1 runs at learning rate 0 (a one-step warm-up) and which saves every step:
# its global_step1 holds exactly the weights it started from.
LR0_FIRST_STEP = dict(
    train_iters=3, lr_warmup_iters=1, save_interval=1, keep_last=0, eval_interval=0, eval_iters=1, log_interval=1
)


def finetune_args(args: list[str], load: Path | str) -> list[str]:
    """`args` (from pretrain_args or bf16_pretrain_args) as a --finetune run that takes its weights from `load`."""
    args = list(args)
    args[args.index("--load") + 1] = str(load)
    return [*args, "--finetune"]


def bf16_pretrain_args(dataset: dict, save: Path, **flags) -> list[str]:
    """pretrain_args for tests/support/cpu_bf16_pretrain.py: bf16 with fp32 gradient accumulation under ZeRO-1 on
    CPU ranks, i.e. DeepSpeed's BF16_Optimizer and its checkpoint layout (as ds_configs/stage*.json on GPUs)."""
    import json

    config = json.loads(CPU_CONFIG.read_text())
    config["data_types"] = {"grad_accum_dtype": "fp32"}
    config_file = save.parent / f"{save.name}.bf16.json"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config))
    args = pretrain_args(dataset, save, bf16=True, **flags)
    args[0] = str(SUPPORT / "cpu_bf16_pretrain.py")
    args[args.index("--ds_config") + 1] = str(config_file)
    return args


def environment(**extra: str) -> dict[str, str]:
    """This process's environment for a run, with `extra` variables. Without TRITON_INTERPRET (which the
    conftest sets for in-process kernel tests): a CPU run takes PyTorch code, as on a user's machine, unless a
    test passes TRITON_INTERPRET="1" to run (and self-check) the Triton kernels under the interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OMP_NUM_THREADS", None)
    env.pop("TRITON_INTERPRET", None)
    return {**env, **extra}


def start(
    args: list[str],
    ranks: int | None = 2,
    log: Path | None = None,
    through_launch_script: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start a run in its own process group (so a test can signal or kill all of it).

    through_launch_script: as launch/*.sh start it, through launch/common.sh's run_deepspeed.
    env: variables added to `environment()`."""
    command = (deepspeed_command(ranks) if ranks else [sys.executable]) + args
    if through_launch_script:
        command = ["bash", "-c", 'source launch/common.sh; DEEPSPEED="$0" run_deepspeed "$@"', *command]
    out = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=environment(**(env or {})),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run(
    args: list[str],
    ranks: int | None = 2,
    timeout: float = 240,
    expect_rc: int | None = 0,
    env: dict[str, str] | None = None,
) -> str:
    """Run to completion; returns the combined output (asserting the exit status unless expect_rc is None)."""
    process = start(args, ranks, env=env)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"run timed out after {timeout} s:\n{output[-4000:]}") from None
    if expect_rc is not None:
        assert process.returncode == expect_rc, f"exit status {process.returncode}:\n{output[-6000:]}"
    return output


def wait_for(condition, process: subprocess.Popen, timeout: float, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before the condition held")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("timed out waiting for the run")
        time.sleep(poll)


def latest(save: Path) -> str | None:
    path = save / "latest"
    return path.read_text().strip() if path.is_file() else None
