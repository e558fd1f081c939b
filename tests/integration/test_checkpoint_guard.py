"""Checkpoints are read safely, never overwritten by a fresh start, and saved so that `latest` always names a
whole one; everything DeepSpeed would reject in its config is found before the process group starts.

The checkpoints of real runs (DeepSpeed, 2 CPU ranks over gloo), hostile and damaged, through the preflight
and every tool as users run them; the save failures as well. The in-process checks are in
tests/checkpoint/test_safety.py and tests/training/test_preflight.py.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hostile import poison
from repo_paths import SUPPORT
from training_runs import REPO_ROOT, environment, latest, pretrain_args, run, start, wait_for, write_config

from megatron_zh.checkpoint.safety import (
    ALLOWED_GLOBALS,
    check_checkpoint_files,
    guard_engine_loads,
    safe_load,
)
from megatron_zh.checkpoint.weights import load_checkpoint_weights
from megatron_zh.errors import CheckpointError
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.preflight import validate

MODEL_STATES = "mp_rank_00_model_states.pt"
SHARD_1 = "zero_pp_rank_1_mp_rank_00_optim_states.pt"


def preflight(config: Path, *flags: str, world_size: int = 2):
    return validate(build_run_config(build_parser().parse_args(["--ds_config", str(config), *flags]), world_size))


def copy_checkpoint(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("tensorboard"))
    return target


def tool(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO_ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, f"exit status {result.returncode}:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


# ----------------------------------------------------------------------------- item 7: DeepSpeed config


# ------------------------------------------------------------------------ item 3: --load and --save


# ------------------------------------------------------------------- item 4: the restricted unpickler


def test_real_checkpoints_need_only_the_allowlist(tiny_checkpoint):
    """Every file a real run wrote opens with the restricted unpickler, and needs no global outside the list."""
    folder = tiny_checkpoint["save"] / latest(tiny_checkpoint["save"])
    files = check_checkpoint_files(folder)
    assert {p.name for p in files} == {MODEL_STATES, "zero_pp_rank_0_mp_rank_00_optim_states.pt", SHARD_1}
    for path in files:
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) <= set(ALLOWED_GLOBALS)
    states = safe_load(folder / MODEL_STATES)
    assert states["rng_states"][0]["numpy"][1].dtype.name == "uint32"
    assert type(safe_load(folder / SHARD_1)["optimizer_state_dict"]["loss_scaler"]).__name__ == "LossScaler"


@pytest.mark.parametrize("poisoned", [MODEL_STATES, SHARD_1])
def test_a_hostile_checkpoint_is_refused_in_process(tiny_checkpoint, tmp_path, poisoned):
    save = copy_checkpoint(tiny_checkpoint["save"], tmp_path / "hostile")
    marker = tmp_path / "pwned"
    poison(save / latest(save) / poisoned, marker)
    with pytest.raises(
        CheckpointError, match=rf"{poisoned} needs global posix.system, which is not on the checkpoint allowlist"
    ):
        load_checkpoint_weights(save)

    # DeepSpeed's engine reads every file through checkpoint_engine.load, which unpickles with weights_only=False.
    def deepspeed_load(path, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=False)

    engine = SimpleNamespace(checkpoint_engine=SimpleNamespace(load=deepspeed_load))
    guard_engine_loads(engine)
    with pytest.raises(CheckpointError, match="needs global posix.system"):
        engine.checkpoint_engine.load(str(save / latest(save) / poisoned), map_location="cpu")
    assert not marker.exists()


def test_a_hostile_checkpoint_runs_nothing_in_any_tool(tiny_checkpoint, zh_text_document, tmp_path):
    """pretrain_gpt.py (resume and --finetune), convert_to_hf.py, generate.py and evaluate.py each refuse it
    with one line (exit status 2) and the payload never runs; --trust-checkpoint is the way past."""
    save = copy_checkpoint(tiny_checkpoint["save"], tmp_path / "hostile")
    marker = tmp_path / "pwned"
    poison(save / latest(save) / MODEL_STATES, marker)
    shard_save = copy_checkpoint(tiny_checkpoint["save"], tmp_path / "hostile_shard")
    poison(shard_save / latest(shard_save) / SHARD_1, marker)
    config = write_config(tmp_path, zh_text_document, save=str(save), load=str(save), train_iters=10)
    refused = "needs global posix.system, which is not on the checkpoint allowlist"
    runs = {
        "resume": ("pretrain_gpt.py", "--ds_config", str(config)),
        "resume (poisoned shard)": (
            "pretrain_gpt.py",
            "--ds_config",
            str(config),
            "--load",
            str(shard_save),
            "--save",
            str(shard_save),
        ),
        "finetune": ("pretrain_gpt.py", "--ds_config", str(config), "--finetune", "--save", str(tmp_path / "stage2")),
        "convert": ("tools/convert_to_hf.py", "--checkpoint", str(save), "--output", str(tmp_path / "hf")),
        "convert (poisoned shard)": (
            "tools/convert_to_hf.py",
            "--checkpoint",
            str(shard_save),
            "--output",
            str(tmp_path / "hf"),
        ),
        "generate": ("tools/generate.py", "--checkpoint", str(save), "--prompt", "今天", "--max-new-tokens", "2"),
        "evaluate": (
            "tools/evaluate.py",
            "--checkpoint",
            str(save),
            "--input",
            zh_text_document["prefix"],
            "--seq-length",
            "16",
            "--max-tokens",
            "64",
        ),
    }
    for name, args in runs.items():
        poisoned = SHARD_1 if "shard" in name else MODEL_STATES
        assert_one_line_error(tool(*args), poisoned, refused)
        assert not marker.exists(), f"{name}: the payload ran"
    assert not (tmp_path / "hf").exists() and not (tmp_path / "stage2" / "global_step1").exists()

    trusted = tool(
        "tools/generate.py",
        "--checkpoint",
        str(save),
        "--prompt",
        "今天",
        "--max-new-tokens",
        "1",
        "--trust-checkpoint",
    )
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert marker.exists(), "--trust-checkpoint should unpickle without restriction"


# ------------------------------------------------------------------- item 5: damaged or full storage


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:4096])


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda f: _truncate(f / MODEL_STATES),
            f"{MODEL_STATES} is truncated (4096 bytes: a PyTorch zip file whose end",
        ),
        (
            lambda f: (f / SHARD_1).write_bytes(b""),
            f"{SHARD_1} is empty (0 bytes): checkpoint global_step8 is incomplete",
        ),
        (lambda f: (f / SHARD_1).write_text("not a checkpoint"), f"{SHARD_1} is truncated or not a PyTorch checkpoint"),
        (lambda f: (f / SHARD_1).unlink(), "has no optimizer shard of rank(s) 1 (written by 2 ranks"),
        (lambda f: (f / MODEL_STATES).unlink(), "not found"),
    ],
)
def test_a_damaged_checkpoint_is_one_error_naming_the_file(
    tiny_checkpoint, zh_text_document, tmp_path, damage, message
):
    save = copy_checkpoint(tiny_checkpoint["save"], tmp_path / "damaged")
    damage(save / latest(save))
    config = write_config(tmp_path, zh_text_document, save=str(save), load=str(save), train_iters=10)
    with pytest.raises(CheckpointError) as caught:
        preflight(config)
    assert message in str(caught.value), str(caught.value)
    if "rank(s) 1" not in message:  # the converter reads the same files through the same helper
        with pytest.raises(CheckpointError, match="damaged|not found|truncated"):
            load_checkpoint_weights(save)


def test_a_damaged_checkpoint_stops_every_tool_with_one_line(tiny_checkpoint, zh_text_document, tmp_path):
    save = copy_checkpoint(tiny_checkpoint["save"], tmp_path / "damaged")
    _truncate(save / latest(save) / MODEL_STATES)
    config = write_config(tmp_path, zh_text_document, save=str(save), load=str(save), train_iters=10)
    expected = (
        f"{MODEL_STATES} is truncated (4096 bytes: a PyTorch zip file whose end, the archive's directory, is missing)"
    )
    assert_one_line_error(tool("pretrain_gpt.py", "--ds_config", str(config)), expected)
    assert_one_line_error(
        tool("tools/convert_to_hf.py", "--checkpoint", str(save), "--output", str(tmp_path / "hf")), expected
    )


def test_a_full_disk_or_a_kill_during_a_save_leaves_a_resumable_run(zh_text_document, tmp_path, monkeypatch):
    """2 ranks save every 2 steps. (1) The disk fills while rank 1 writes its step-4 shard: every rank stops
    with one line, `latest` stays on global_step2 and the half-written global_step4 is gone. (2) All ranks are
    killed with SIGKILL while rank 1 writes its step-4 shard: `latest` stays on global_step2. (3) The same
    command then moves the unfinished folder aside (renamed, not deleted), says so, resumes from step 2 and
    finishes."""
    save = tmp_path / "run"
    args = pretrain_args(
        zh_text_document, save, train_iters=4, save_interval=2, eval_interval=0, eval_iters=1, log_interval=1
    )
    faulty = [str(SUPPORT / "faulty_storage_pretrain.py"), *args[1:]]
    shard = f"global_step4/{SHARD_1}"

    monkeypatch.setenv("FAULTY_SAVE", f"{shard}=enospc")  # the runs inherit this process's environment
    output = run(faulty, expect_rc=2)
    assert "Traceback" not in output, output[-4000:]
    errors = sorted({line for line in output.splitlines() if line.startswith("error: ")})
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"error: saving checkpoint global_step4 in {save} failed: rank 1 could not write")
    assert f"No space left on device (errno {errno.ENOSPC})" in errors[0]
    assert "`latest` still names global_step2 and the unfinished global_step4 was removed" in errors[0]
    assert latest(save) == "global_step2" and not (save / "global_step4").exists()

    marker = tmp_path / "paused"
    monkeypatch.setenv("FAULTY_SAVE", f"{shard}=pause:{marker}")
    process = start(faulty, log=tmp_path / "killed.log")
    # Rank 1 stops at its shard; rank 0 writes the model states on its own time: wait for both, then kill.
    wait_for(lambda: marker.exists() and (save / "global_step4" / MODEL_STATES).is_file(), process, timeout=240)
    os.killpg(process.pid, signal.SIGKILL)  # every rank and the launcher, mid-save
    process.wait()
    assert latest(save) == "global_step2"
    assert (save / "global_step4" / MODEL_STATES).is_file()  # a partial folder the kill left behind

    monkeypatch.delenv("FAULTY_SAVE")
    output = run(args)
    moved = re.search(
        rf"moved {save / 'global_step4'} to (global_step4\.incomplete-\d{{8}}-\d{{6}}): it is not a "
        r"complete checkpoint \(.*\), left by a save that never finished",
        output,
    )
    assert moved, output[-3000:]
    left = {p.name for p in (save / moved.group(1)).iterdir()}  # kept as the kill left it: no rank-1 shard
    assert MODEL_STATES in left and SHARD_1 not in left
    assert "at iteration 2, 32 samples consumed" in output
    assert latest(save) == "global_step4"
    assert len(check_checkpoint_files(save / "global_step4")) == 3
