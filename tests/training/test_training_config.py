"""Configuration of a training run: JSON + flags -> one resolved config, and every check that stops a bad
run before anything heavy starts. In-process and fast (no process group, no model)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from training_runs import REPO_ROOT, environment, write_config

from megatron_zh.checkpoint.client_state import CHECKPOINT_FORMAT, ClientState
from megatron_zh.errors import CheckpointError, ConfigError, DataFormatError, MegatronZhError
from megatron_zh.training.checkpointing.save import prune_checkpoints
from megatron_zh.training.checkpointing.start import TrainState, resolve_start
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.config.train_config import TrainConfig
from megatron_zh.training.distributed.process_group import setup_rendezvous_env
from megatron_zh.training.distributed.signals import StopRequest
from megatron_zh.training.loop import LogWindow, NonFiniteGuard, NonFiniteLossError
from megatron_zh.training.preflight import validate


def resolve(config: Path, *flags: str, world_size: int = 2):
    return build_run_config(build_parser().parse_args(["--ds_config", str(config), *flags]), world_size)


@pytest.fixture
def config(tmp_path, zh_text_document) -> Path:
    return write_config(tmp_path, zh_text_document)


# ------------------------------------------------------------------------------------ resolution


def test_cpu_config_resolves_and_validates(config):
    run = resolve(config)
    assert (run.micro_batch_size, run.gradient_accumulation_steps, run.global_batch_size) == (4, 2, 16)
    scheduler = run.deepspeed["scheduler"]["params"]
    assert scheduler == {
        "warmup_min_lr": 0.0,
        "warmup_type": "linear",
        "warmup_num_steps": 12,
        "warmup_max_lr": 2e-3,
        "total_num_steps": 120,
    }
    assert run.precision == "fp32" and run.model.num_layers == 2
    preflight = validate(run)
    assert preflight.vocab_size == 21128 and preflight.start.mode == "scratch"


def test_flags_override_the_file(config):
    run = resolve(
        config,
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "32",
        "--lr",
        "3e-4",
        "--min-lr",
        "1e-5",
        "--clip-grad",
        "0.5",
        "--train-iters",
        "50",
        "--lr-warmup-iters",
        "5",
        "--seq-length",
        "64",
        "--save-interval",
        "0",
        "--seed",
        "7",
        "--weight-decay",
        "0.01",
        "--adam-beta2",
        "0.95",
        "--adam-eps",
        "1e-8",
        "--kernels",
        "torch",
        "--compile",
    )
    assert (run.train.kernels, run.train.compile) == ("torch", True)
    assert (resolve(config).train.kernels, resolve(config).train.compile) == ("auto", False)  # the defaults
    ds = run.deepspeed
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.95] and ds["optimizer"]["params"]["eps"] == 1e-8
    assert ds["optimizer"]["params"]["weight_decay"] == 0.01
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        2,
        8,
        32,
    )
    assert ds["optimizer"]["params"]["lr"] == 3e-4 and ds["gradient_clipping"] == 0.5
    assert ds["scheduler"]["params"] == {
        "warmup_min_lr": 1e-5,
        "warmup_type": "linear",
        "warmup_num_steps": 5,
        "warmup_max_lr": 3e-4,
        "total_num_steps": 50,
    }
    assert run.train.data.seq_length == 64 and run.train.save_interval is None and run.train.data.seed == 7
    assert run.tokens_per_step == 32 * 64


def test_global_batch_is_derived_when_the_file_gives_accumulation(tmp_path, zh_text_document):
    config = write_config(
        tmp_path, zh_text_document, deepspeed={"gradient_accumulation_steps": 3}, drop=("train_batch_size",)
    )
    run = resolve(config, world_size=3)
    assert (run.micro_batch_size, run.gradient_accumulation_steps, run.global_batch_size) == (4, 3, 36)


def test_published_stage_configs_resolve_on_8_gpus():
    stage1 = resolve(REPO_ROOT / "ds_configs" / "stage1.json", world_size=8)
    stage2 = resolve(REPO_ROOT / "ds_configs" / "stage2.json", world_size=8)
    assert (stage1.micro_batch_size, stage1.global_batch_size, stage1.train.data.seq_length) == (64, 512, 128)
    assert (stage2.micro_batch_size, stage2.global_batch_size, stage2.train.data.seq_length) == (16, 128, 1024)
    assert stage1.precision == stage2.precision == "bf16"
    for run, lr, iters in ((stage1, 1e-4, 1_000_000), (stage2, 5e-5, 250_000)):
        params = run.deepspeed["scheduler"]["params"]
        assert params["warmup_type"] == "linear" and params["warmup_num_steps"] == iters // 10
        assert params["total_num_steps"] == iters and params["warmup_max_lr"] == lr
        assert run.deepspeed["optimizer"]["params"] == {
            "lr": lr,
            "betas": [0.9, 0.999],
            "eps": 1e-6,
            "weight_decay": 0.0,
            "torch_adam": True,
        }
        assert run.deepspeed["zero_optimization"]["stage"] == 1
    assert stage2.train.finetune and stage2.train.load == stage1.train.save


# ----------------------------------------------------------------------------------- the errors


@pytest.mark.parametrize(
    "flags, world_size, message",
    [
        (("--global-batch-size", "18"), 2, "not divisible by micro-batch 4 x 2"),
        ((), 3, "global batch size 16 is not divisible by micro-batch 4 x 3"),
        (("--seq-length", "512"), 2, "256 position embeddings"),
        (("--micro-batch-size", "0"), 2, "must be a positive integer"),
        (("--train-iters", "2", "--lr-warmup-iters", "5"), 2, "warm-up (5 steps) must be shorter than train_iters"),
        (("--save-interval", "10", "--save", "x", "--keep-last", "-1"), 2, "keep_last must be a positive integer"),
        (("--adam-beta2", "1.5"), 2, "--adam-beta2 must be in [0, 1) or null, got 1.5"),
        (("--adam-eps", "0"), 2, "--adam-eps must be a positive number or null, got 0.0"),
    ],
)
def test_inconsistent_values_are_config_errors(config, flags, world_size, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(config, *flags, world_size=world_size)


@pytest.mark.parametrize(
    "deepspeed, pretrain, drop, message",
    [
        ({"gradient_accumulation_steps": 4}, {}, (), "drop gradient_accumulation_steps (it is derived)"),
        ({"zero_optimization": {"stage": 3}}, {}, (), "zero_optimization.stage 3 is not supported"),
        (
            {"scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 999}}},
            {},
            (),
            "scheduler.params.total_num_steps is 999 but train_iters gives 120",
        ),
        ({}, {"save_intervall": 5}, (), "unknown key 'save_intervall'; did you mean 'save_interval'?"),
        ({}, {"kernels": "cuda"}, (), "kernels must be one of"),
        ({}, {}, ("optimizer",), 'an "optimizer" section'),
        ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, {}, (), "bf16 and fp16 are both enabled"),
    ],
)
def test_bad_files_are_config_errors(tmp_path, zh_text_document, deepspeed, pretrain, drop, message):
    config = write_config(tmp_path, zh_text_document, deepspeed, drop=drop, **pretrain)
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(config)


def test_missing_pretrain_values_name_the_flag(tmp_path, zh_text_document):
    config = json.loads(write_config(tmp_path, zh_text_document).read_text())
    del config["pretrain"]["train_iters"]
    (tmp_path / "c.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="missing train_iters .*--train-iters"):
        resolve(tmp_path / "c.json")
    assert resolve(tmp_path / "c.json", "--train-iters", "9").train.train_iters == 9


def test_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "train_batch_size": 16,\n  "pretrain": {,}\n}\n')
    with pytest.raises(ConfigError, match=r"broken.json:3:16: not valid JSON"):
        resolve(path)


def test_a_key_written_twice_is_refused_not_silently_the_last(config, tmp_path):
    lines = json.dumps(json.loads(config.read_text()), indent=2).splitlines()
    assert lines[1].startswith('  "train_batch_size": ')  # the seed's case: 16 here, 1600 further down
    path = tmp_path / "twice.json"
    path.write_text("\n".join([*lines[:-2], lines[-2] + ",", '  "train_batch_size": 1600', "}"]) + "\n")
    second = len(lines)  # the new line, before the closing brace
    with pytest.raises(ConfigError) as caught:
        resolve(path)
    assert str(caught.value) == (
        f'{path}: key "train_batch_size" is written twice (lines 2 and {second}); JSON readers silently keep only '
        "the last: remove one"
    )
    pretrain = json.loads(config.read_text())
    text = json.dumps(pretrain, indent=2).replace('"seq_length": ', '"seq_length": 64,\n    "seq_length": ', 1)
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        resolve(path)
    found = re.search(r'key "pretrain.seq_length" is written twice \(lines (\d+) and (\d+)\)', str(caught.value))
    assert found and int(found[2]) == int(found[1]) + 1, caught.value


@pytest.mark.parametrize("flag", ["--bf16", "--fp16"])
def test_half_precision_without_a_gpu_is_refused(config, flag):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=flag[2:] + r".*--fp32"):
        validate(resolve(config, flag))


def test_published_bf16_config_is_refused_on_cpu_with_the_fix(zh_text_document):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    stage1 = resolve(
        REPO_ROOT / "ds_configs" / "stage1.json",
        "--data-path",
        zh_text_document["prefix"],
        "--vocab-file",
        zh_text_document["vocab"],
        world_size=8,
    )
    with pytest.raises(ConfigError, match="asks for bf16"):
        validate(stage1)


def test_deepspeed_adam_that_needs_a_compiled_op_is_refused_on_cpu(tmp_path, zh_text_document):
    optimizer = {"type": "AdamW", "params": {"lr": 1e-3}}
    run = resolve(write_config(tmp_path, zh_text_document, lambda c: c.update(optimizer=optimizer)))
    with pytest.raises(ConfigError, match="torch_adam"):
        validate(run)


def test_missing_data_files(config, tmp_path):
    with pytest.raises(DataFormatError, match=r"nothere_text_document.idx not found"):
        validate(resolve(config, "--data-path", str(tmp_path / "nothere_text_document")))


def test_missing_vocab_file(config, tmp_path):
    with pytest.raises(ConfigError, match=r"vocab file .*missing.txt not found"):
        validate(resolve(config, "--vocab-file", str(tmp_path / "missing.txt")))


def test_vocab_that_does_not_match_the_dataset(config, zh_text_document, tmp_path):
    lines = Path(zh_text_document["vocab"]).read_bytes().split(b"\n")  # some tokens are Unicode line breaks
    lines[3000], lines[3001] = lines[3001], lines[3000]  # same size, different ids
    other = tmp_path / "other_vocab.txt"
    other.write_bytes(b"\n".join(lines))
    with pytest.raises(DataFormatError, match=r"vocab sha256:.*preprocess_data\.py"):
        validate(resolve(config, "--vocab-file", str(other)))


def test_model_smaller_than_the_vocab(tmp_path, zh_text_document):
    config = write_config(tmp_path, zh_text_document, model_overrides={"vocab_size": 1000})
    with pytest.raises(ConfigError, match="has only 1000 embeddings"):
        validate(resolve(config))


def fake_client_state(**fields: object) -> dict[str, object]:
    """A complete client state (as client_state.json holds it) with `fields` changed."""
    defaults: dict[str, object] = {
        "checkpoint_format": CHECKPOINT_FORMAT,
        "iteration": 7,
        "consumed_samples": 0,
        "model_config": {},
        "vocab_fingerprint": "sha256:" + "1" * 64,
        "vocab_size": 21128,
        "train_config": None,
        "world_size": 1,
        "precision": "fp32",
    }
    return {**defaults, **fields}


def fake_checkpoint(directory: Path, tag: str, **client_state: object) -> None:
    """A committed checkpoint as validation sees it: `latest`, client_state.json, and a model-states file and
    one ZeRO shard per rank that are PyTorch files (of nothing: enough for the checks that read no weights)."""
    folder = directory / tag
    folder.mkdir(parents=True)
    state = fake_client_state(**client_state)
    torch.save({}, folder / "mp_rank_00_model_states.pt")
    for rank in range(int(state["world_size"])):
        torch.save({}, folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (folder / "client_state.json").write_text(json.dumps(state))
    (directory / "latest").write_text(tag)


def test_client_state_keys_round_trip():
    data = fake_client_state(source="Hugging Face folder x", weights_only=True)
    state = ClientState.from_dict({**data, "module": "ignored: a DeepSpeed key"}, "ckpt/global_step7")
    assert state.to_dict() == data and list(state.to_dict()) == list(data)  # same keys, same order
    assert list(ClientState.from_dict(fake_client_state(), "x").to_dict()) == list(fake_client_state())
    with_rng = ClientState.from_dict({**data, "rng_states": []}, "x")
    assert with_rng.to_dict() == {**data, "rng_states": []} and with_rng.without_rng_states().to_dict() == data
    carried = ClientState.from_dict({**data, "unlogged_losses": [8.5, None]}, "x")
    assert carried.to_dict() == {**data, "unlogged_losses": [8.5, None]}
    with pytest.raises(CheckpointError, match="unlogged_losses must be a list of numbers or nulls"):
        ClientState.from_dict({**data, "unlogged_losses": ["8.5"]}, "x")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"consumed_samples": ...}, "has no consumed_samples"),  # ...: the key is left out
        ({"iteration": "7"}, "iteration must be an integer >= 0, got '7'"),
        ({"model_config": []}, "model_config must be an object"),
        ({"precision": "fp8"}, "precision must be one of"),
    ],
)
def test_client_state_with_a_missing_or_ill_typed_key(config, tmp_path, change, message):
    data = {k: v for k, v in {**fake_client_state(), **change}.items() if v is not ...}
    with pytest.raises(CheckpointError, match=f"ckpt/global_step7.*{message}"):
        ClientState.from_dict(data, "ckpt/global_step7")
    fake_checkpoint(tmp_path / "ckpt", "global_step7")
    (tmp_path / "ckpt" / "global_step7" / "client_state.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message):
        resolve_start(resolve(config, "--load", str(tmp_path / "ckpt")).train)


def test_vocab_that_does_not_match_the_checkpoint(config, tmp_path):
    run = resolve(config)
    fake_checkpoint(
        tmp_path / "ckpt",
        "global_step7",
        iteration=7,
        vocab_fingerprint="sha256:" + "0" * 64,
        model_config=run.model.to_dict(),
    )
    with pytest.raises(ConfigError, match="global_step7 was made with vocab sha256:0000"):
        validate(run)


def test_finetune_from_an_unfinished_run_warns(config, tmp_path, caplog):
    """Stage 2 from a stage-1 directory whose newest checkpoint is not its last step: allowed, said loudly."""
    run = resolve(config)
    for iteration, planned, warned in ((500, 1000, True), (1000, 1000, False)):
        stage1 = tmp_path / f"stage1_{iteration}"
        fake_checkpoint(
            stage1,
            f"global_step{iteration}",
            iteration=iteration,
            train_config={**run.train.to_dict(), "train_iters": planned},
        )
        train = TrainConfig.from_dict(
            {**run.train.to_dict(), "load": str(stage1), "save": str(tmp_path / "s2"), "finetune": True}
        )
        caplog.clear()
        with caplog.at_level("WARNING"):
            start = resolve_start(train)
        assert (start.mode, start.tag) == ("finetune", f"global_step{iteration}")
        assert ("planned 1000 iterations: it has not finished" in caplog.text) == warned, caplog.text


def test_checkpoint_of_another_model_shape(config, tmp_path):
    run = resolve(config)
    preflight = validate(run)
    fake_checkpoint(
        tmp_path / "ckpt",
        "global_step7",
        iteration=7,
        vocab_fingerprint=preflight.vocab_fingerprint,
        model_config={**run.model.to_dict(), "hidden_size": 256},
    )
    with pytest.raises(ConfigError, match="hidden_size: checkpoint 256 vs run 128"):
        validate(run)


def test_latest_naming_a_missing_checkpoint(config, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest").write_text("global_step9")
    with pytest.raises(MegatronZhError, match=r"latest names global_step9, but \S+global_step9 does not exist"):
        validate(resolve(config))
    fake_checkpoint(tmp_path / "ckpt", "global_step4")
    (tmp_path / "ckpt" / "latest").write_text("global_step9")
    with pytest.raises(CheckpointError) as caught:
        validate(resolve(config))
    expected = "(complete checkpoints there: global_step4); pass --ckpt-step 4 to start from the newest"
    assert expected in str(caught.value)


@pytest.mark.parametrize("content", [b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8", b"\xff\xfe"])
def test_a_binary_latest_is_one_line(config, tmp_path, content):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest").write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        validate(resolve(config))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'ckpt' / 'latest'} is not text ({len(content)} bytes of binary data)")
    assert "remove the file to resume from the newest complete checkpoint" in message and "\n" not in message


def test_ckpt_step_needs_a_load(tmp_path, zh_text_document):
    config = write_config(tmp_path, zh_text_document, load=None)
    with pytest.raises(ConfigError, match="ckpt_step names a checkpoint of --load, but there is no --load"):
        resolve(config, "--ckpt-step", "5")


def test_finetune_without_a_checkpoint(config, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="finetune: no checkpoint to start from"):
        validate(resolve(config, "--finetune", "--load", str(tmp_path / "empty"), "--save", str(tmp_path / "s2")))


@pytest.mark.integration
def test_command_line_error_is_one_line_without_traceback(tmp_path, zh_text_document):
    config = write_config(tmp_path, zh_text_document)
    result = subprocess.run(
        [sys.executable, "pretrain_gpt.py", "--ds_config", str(config), "--global-batch-size", "10"],
        cwd=REPO_ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: global batch size 10 is not divisible")


# ------------------------------------------------------------------------------- small machinery


def test_rendezvous_for_a_plain_python_process():
    environ: dict[str, str] = {}
    env = setup_rendezvous_env(None, environ)
    assert (env.rank, env.world_size, env.local_rank, env.launched_by) == (0, 1, 0, "single")
    assert environ["MASTER_ADDR"] == "127.0.0.1" and int(environ["MASTER_PORT"]) > 0


def test_rendezvous_under_the_launcher_and_under_srun():
    launched = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1", "LOCAL_SIZE": "2"}
    env = setup_rendezvous_env(1, launched)  # --local_rank=1 when LOCAL_RANK is not exported
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (1, 2, 1, 2)
    slurm = {
        "SLURM_PROCID": "9",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS_PER_NODE": "8(x2)",
        "MASTER_ADDR": "node001",
    }
    env = setup_rendezvous_env(None, slurm)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.launched_by) == (9, 16, 1, 8, "slurm")
    assert slurm["RANK"] == "9" and slurm["MASTER_PORT"] == "29500"
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        setup_rendezvous_env(None, {"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def test_nonfinite_losses_are_tolerated_a_few_times_then_stop_the_run():
    guard = NonFiniteGuard(tolerance=3)
    guard.check(1, 5.0, True)
    for iteration in (2, 3, 4):
        guard.check(iteration, math.nan, False)
    assert not guard.weights_suspect  # skipped updates (fp16 overflow) leave the weights as they were
    guard.check(5, 4.9, True)  # a finite loss resets the count
    for iteration in (6, 7, 8):
        guard.check(iteration, math.inf, False)
    with pytest.raises(
        NonFiniteLossError,
        match=r"4 iterations in a row \(6-9\); last finite loss 4.9000 at "
        r"iteration 5",
    ):
        guard.check(9, math.nan, False)

    guard = NonFiniteGuard(tolerance=3)
    guard.check(1, math.nan, True)
    assert guard.weights_suspect  # an applied NaN update (fp32, bf16): the weights are not saved
    guard.check(2, math.nan, False)
    assert guard.weights_suspect
    guard.check(3, 4.8, True)
    assert not guard.weights_suspect


def test_a_resumed_log_window_continues_the_saved_one():
    """The losses a checkpoint carried (steps after the last log) open the resumed run's first window."""
    state = TrainState(iteration=7, unlogged_losses=[8.5, None, 8.25])  # steps 5-7, step 6 non-finite
    window = LogWindow.resumed(state, log_interval=4, started=0.0)  # last logged at 4: steps 5-7 are this window's
    assert (window.losses, window.nonfinite, window.steps) == ([8.5, 8.25], 1, 0)
    window.add(8, torch.tensor(16.0), update_applied=True)  # two micro-batches on one rank: mean loss 8.0
    assert (window.losses, window.steps) == ([8.5, 8.25], 1)  # still on the device
    one_rank = SimpleNamespace(
        run=SimpleNamespace(gradient_accumulation_steps=2),
        env=SimpleNamespace(world_size=1),
        device=torch.device("cpu"),
    )
    window.read(one_rank, NonFiniteGuard(tolerance=0))
    assert (window.losses, window.nonfinite, window.steps) == ([8.5, 8.25, 8.0], 1, 1)
    # The interval changed since the save: only the steps after its last multiple (7 % 5 = 2: steps 6, 7).
    assert LogWindow.resumed(state, log_interval=5, started=0.0).unlogged == [None, 8.25]
    assert LogWindow.resumed(state, log_interval=7, started=0.0).unlogged == []
    assert LogWindow.resumed(TrainState(iteration=7), log_interval=4, started=0.0).unlogged == []


def test_stop_request_turns_signals_into_a_flag():
    previous = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # forwarded again by the launcher: ignored, still saving
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C on top: stop now
    assert signal.getsignal(signal.SIGTERM) == previous


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in (10, 20, 30, 40):
        fake_checkpoint(tmp_path, f"global_step{step}", iteration=step)
    (tmp_path / "global_step35").mkdir()  # abandoned by a killed save: older than latest, never committed
    (tmp_path / "global_step41").write_text("a file, not a checkpoint folder")
    aside = tmp_path / "global_step5.incomplete-20261205-101500"  # moved aside by a start: pruning never sees it
    (tmp_path / "global_step20").rename(aside)
    fake_checkpoint(tmp_path, "global_step20", iteration=20)
    (tmp_path / "latest").write_text("global_step40")
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["global_step10", "global_step20", "global_step35"]
    assert sorted(p.name for p in tmp_path.glob("global_step*")) == [
        "global_step30",
        "global_step40",
        "global_step41",
        aside.name,
    ]
