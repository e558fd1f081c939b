"""Checkpoints are read safely, never overwritten by a fresh start, and saved so that `latest` always names a
whole one; everything DeepSpeed would reject in its config is found before the process group starts.

In-process checks call the preflight (`validation.validate`) directly; the tools and the save failures run
as users run them (subprocesses, 2 CPU ranks over gloo where ranks matter).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from training_runs import REPO_ROOT, environment, latest, pretrain_args, run, start, wait_for, write_config

from megatron_zh.checkpoint.safety import (
    ALLOWED_GLOBALS,
    check_checkpoint_files,
    guard_engine_loads,
    safe_load,
    trusting_checkpoints,
)
from megatron_zh.checkpoint.weights import load_checkpoint_weights
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.config.deepspeed_preflight import check_deepspeed_config
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


@pytest.mark.parametrize(
    "deepspeed, message",
    [
        ({"optimizer": {"type": "AdamX"}}, "optimizer.type 'AdamX' is not an optimizer DeepSpeed knows; did you mean"),
        (
            {"optimizer": {"params": {"betaz": [0.9, 0.95]}}},
            "optimizer.params.betaz is not a parameter of torch.optim.AdamW; did you mean 'betas'?",
        ),
        ({"optimizer": {"params": {"betas": [1.5, 0.9]}}}, "torch.optim.AdamW rejects them: Invalid beta parameter"),
        ({"optimizer": {"params": {"max_grad_norm": 1.0}}}, "optimizer.params.max_grad_norm is not supported"),
        ({"optimizer": {"type": "SGD", "params": {"lr": 0.1}}}, "is not one DeepSpeed has tested with ZeRO"),
        (
            {"scheduler": {"type": "WarmupDecay"}},
            "scheduler.type 'WarmupDecay' is not a schedule DeepSpeed knows; did you mean 'WarmupDecayLR'?",
        ),
        (
            {"scheduler": {"params": {"warmup_num_step": 5}}},
            "scheduler.params.warmup_num_step is not a parameter of deepspeed.runtime.lr_schedules.WarmupDecayLR; "
            "did you mean 'warmup_num_steps'?",
        ),
        ({"scheduler": {"params": {"warmup_type": "lin"}}}, 'warmup_type \'lin\' must be "linear" or "log"'),
        (
            lambda c: c.update(scheduler={"type": "StepLR", "params": {}}),
            "scheduler.params lacks step_size, which torch.optim.lr_scheduler.StepLR requires",
        ),
        (
            {"fp16": {"enabled": False, "loss_scale_windw": 100}},
            "fp16.loss_scale_windw: Extra inputs are not permitted",
        ),
        (
            {"bf16": {"enabled": False, "immediate_grad_update": "maybe"}},
            "bf16.immediate_grad_update: Input should be a valid boolean",
        ),
        ({"zero_optimization": {"overlap_com": True}}, "zero_optimization.overlap_com: Extra inputs are not permitted"),
        (
            {"data_types": {"grad_accum_dtype": "fp31"}},
            "data_types.grad_accum_dtype 'fp31' is not a dtype DeepSpeed knows",
        ),
        (
            {"gradient_clippin": 1.0},
            "unknown key 'gradient_clippin'; did you mean 'gradient_clipping'? (DeepSpeed does not read it",
        ),
        ({"activation_checkpointng": {}}, "did you mean 'activation_checkpointing'?"),
        ({"my_notes": "x"}, "unknown key 'my_notes' (DeepSpeed does not read it and would ignore it)"),
    ],
)
def test_what_deepspeed_would_reject_is_named_before_the_process_group(tmp_path, zh_text_document, deepspeed, message):
    """Without the preflight (validate, which runs before the process group) these pass and fail inside
    deepspeed.initialize, after the process group, the dataset indices and the model are built."""
    config = write_config(tmp_path, zh_text_document, deepspeed)
    with pytest.raises(ConfigError) as caught:
        preflight(config)
    assert str(config) in str(caught.value) and message in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


def test_valid_deepspeed_configs_pass_the_preflight(tmp_path, zh_text_document):
    config = write_config(
        tmp_path, zh_text_document, lambda c: c.update(scheduler={"type": "StepLR", "params": {"step_size": 10}})
    )
    preflight(config)
    for name in ("stage1.json", "stage2.json"):  # the published recipes, as resolved for 8 GPUs
        args = build_parser().parse_args(["--ds_config", str(REPO_ROOT / "ds_configs" / name)])
        run_config = build_run_config(args, 8)
        check_deepspeed_config(run_config.deepspeed, run_config.config_file)


# ------------------------------------------------------------------------ item 3: --load and --save


def fake_committed_checkpoint(directory: Path, tag: str = "global_step7") -> None:
    (directory / tag).mkdir(parents=True)
    (directory / tag / MODEL_STATES).write_bytes(b"")
    (directory / tag / "client_state.json").write_text(json.dumps({"iteration": 7}))
    (directory / "latest").write_text(tag)


def test_a_load_that_does_not_exist_is_an_error(tmp_path, zh_text_document):
    config = write_config(tmp_path, zh_text_document, load=str(tmp_path / "typo"), save=str(tmp_path / "new"))
    with pytest.raises(ConfigError, match=r"--load .*typo does not exist"):
        preflight(config)
    # A resubmittable run names its own --save as --load: the first submission finds nothing there yet.
    preflight(write_config(tmp_path, zh_text_document))


@pytest.mark.parametrize("how", ["no --load", "--load of an empty directory", "load in the config file"])
def test_a_fresh_start_never_overwrites_a_save_holding_a_run(tmp_path, zh_text_document, how):
    save, empty = tmp_path / "run1", tmp_path / "empty"
    fake_committed_checkpoint(save)
    empty.mkdir()
    flags: list[str] = []
    if how == "no --load":
        config = write_config(tmp_path, zh_text_document, save=str(save), load=None)
    elif how == "--load of an empty directory":
        config = write_config(tmp_path, zh_text_document, save=str(save), load=None)
        flags = ["--load", str(empty)]
    else:
        config = write_config(tmp_path, zh_text_document, save=str(save), load=str(empty))
    with pytest.raises(ConfigError) as caught:
        preflight(config, *flags)
    message = str(caught.value)
    assert f"--save {save} already holds checkpoint global_step7" in message
    assert (str(empty) in message) == (how != "no --load"), message
    assert f"pass --load {save}" in message and "--override-existing-save" in message
    start = preflight(config, *flags, "--override-existing-save").start
    assert start.mode == "scratch"


def test_a_read_only_save_is_refused_before_training(tmp_path, zh_text_document):
    save = tmp_path / "readonly"
    save.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount is the real test
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(save)]).returncode == 0
        if not mounted:
            pytest.skip("running as root without permission to mount a read-only tmpfs")
    else:
        save.chmod(0o555)
    try:
        config = write_config(tmp_path, zh_text_document, save=str(save), load=str(save))
        with pytest.raises(
            ConfigError, match=rf"--save {save} is not writable: (Read-only file system|Permission denied)"
        ):
            preflight(config)
        nested = write_config(tmp_path, zh_text_document, save=str(save / "run"), load=str(save / "run"))
        with pytest.raises(ConfigError, match=rf"--save {save / 'run'} is not writable \(cannot create it in {save}\)"):
            preflight(nested)
    finally:
        if mounted:
            subprocess.run(["umount", str(save)], check=True)
        else:
            save.chmod(0o755)


# ------------------------------------------------------------------- item 4: the restricted unpickler


class _Payload:
    """What a hostile checkpoint holds: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def poison(path: Path, marker: Path) -> None:
    """Add the payload to a real checkpoint file, keeping everything else."""
    states = torch.load(path, map_location="cpu", weights_only=False)
    states["payload"] = _Payload(marker)
    torch.save(states, path)


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


def test_deepspeed_fp16_loss_scaler_is_on_the_allowlist(tmp_path):
    """fp16 runs (GPU only) save a DynamicLossScaler in the optimizer state: the object DeepSpeed pickles loads."""
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler

    # As DeepSpeed's ZeRO-1/2 optimizer builds it for fp16 with dynamic loss scaling (the fp16 default).
    dynamic = dict(init_scale=2**16, scale_window=1000, min_scale=1, delayed_shift=2, consecutive_hysteresis=False)
    scaler = CreateLossScaler(torch.float16, static_loss_scale=0, dynamic_scaling=True, dynamic_loss_args=dynamic)
    assert type(scaler).__name__ == "DynamicLossScaler"
    torch.save({"optimizer_state_dict": {"loss_scaler": scaler}}, tmp_path / "fp16.pt")
    assert safe_load(tmp_path / "fp16.pt")["optimizer_state_dict"]["loss_scaler"].cur_scale == 2**16


def test_legacy_format_pickles_are_checked_too(tmp_path):
    """pytorch_model.bin files from before torch's zip format (convert_from_hf.py reads them) go through the
    same restricted unpickler: tensors load, a payload is refused by name."""
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.bin", _use_new_zipfile_serialization=False)
    torch.save({"w": _Payload(marker)}, tmp_path / "hostile.bin", _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(tmp_path / "plain.bin")["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match="hostile.bin needs global posix.system"):
        safe_load(tmp_path / "hostile.bin")
    assert not marker.exists()


def test_trust_lasts_for_its_block_only(tmp_path):
    """--trust-checkpoint is scoped: inside `trusting_checkpoints(True)` the full unpickler runs the file (so the
    payload does run), and after the block, even one that raised, the same file is refused again."""
    marker = tmp_path / "pwned"
    torch.save({"w": _Payload(marker)}, tmp_path / "hostile.pt")
    with pytest.raises(RuntimeError, match="leaves the block"):
        with trusting_checkpoints(True):
            safe_load(tmp_path / "hostile.pt")
            raise RuntimeError("leaves the block")
    assert marker.exists(), "inside the block the file is trusted and unpickled without restriction"
    marker.unlink()
    with pytest.raises(CheckpointError, match="hostile.pt needs global posix.system"):
        safe_load(tmp_path / "hostile.pt")
    with trusting_checkpoints(False), pytest.raises(CheckpointError, match="needs global posix.system"):
        safe_load(tmp_path / "hostile.pt")
    assert not marker.exists()


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
        (lambda f: _truncate(f / MODEL_STATES), f"{MODEL_STATES} is truncated or not a PyTorch checkpoint"),
        (lambda f: (f / SHARD_1).write_bytes(b""), f"{SHARD_1} is empty (0 bytes): the checkpoint is damaged"),
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
    expected = f"{MODEL_STATES} is truncated or not a PyTorch checkpoint"
    assert_one_line_error(tool("pretrain_gpt.py", "--ds_config", str(config)), expected)
    assert_one_line_error(
        tool("tools/convert_to_hf.py", "--checkpoint", str(save), "--output", str(tmp_path / "hf")), expected
    )


def test_a_full_disk_or_a_kill_during_a_save_leaves_a_resumable_run(zh_text_document, tmp_path, monkeypatch):
    """2 ranks save every 2 steps. (1) The disk fills while rank 1 writes its step-4 shard: every rank stops
    with one line, `latest` stays on global_step2 and the half-written global_step4 is gone. (2) All ranks are
    killed with SIGKILL while rank 1 writes its step-4 shard: `latest` stays on global_step2. (3) The same
    command then removes the unfinished folder, says so, resumes from step 2 and finishes."""
    save = tmp_path / "run"
    args = pretrain_args(
        zh_text_document, save, train_iters=4, save_interval=2, eval_interval=0, eval_iters=1, log_interval=1
    )
    faulty = [str(REPO_ROOT / "tests" / "faulty_storage_pretrain.py"), *args[1:]]
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
    assert "removed global_step4: left by a save that never finished (`latest` names global_step2)" in output
    assert "at iteration 2, 32 samples consumed" in output
    assert latest(save) == "global_step4"
    assert len(check_checkpoint_files(save / "global_step4")) == 3
