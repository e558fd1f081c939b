"""End-to-end training on CPU: 2 ranks over gloo, real DeepSpeed ZeRO-1, the real sampled corpus.

Every run goes through the command users type (`deepspeed --num_gpus 2 pretrain_gpt.py --ds_config
ds_configs/cpu_tiny.json ...`, or plain `python pretrain_gpt.py`). One 30-step reference run is
shared by the tests that only read what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
from pathlib import Path

import psutil
import pytest
import torch
from training_runs import (
    LR0_FIRST_STEP,
    bf16_pretrain_args,
    finetune_args,
    latest,
    pretrain_args,
    run,
    start,
    wait_for,
)

from megatron_zh.checkpoint.client_state import ClientState, read_client_state
from megatron_zh.checkpoint.layout import CLIENT_STATE_FILE
from megatron_zh.checkpoint.master_weights import read_fp32_weights
from megatron_zh.training.checkpointing.start import resolve_start
from megatron_zh.training.config.train_config import TrainConfig
from megatron_zh.training.metrics import read_metrics

REFERENCE_ITERS = 30
REFERENCE_FLAGS = dict(train_iters=REFERENCE_ITERS, log_interval=1, eval_interval=10, save_interval=10, keep_last=2)
# client_state.json of a training checkpoint: these keys, in this order (the model-states file adds rng_states).
CLIENT_STATE_KEYS = (
    "checkpoint_format",
    "iteration",
    "consumed_samples",
    "model_config",
    "vocab_fingerprint",
    "vocab_size",
    "normalization",
    "train_config",
    "world_size",
    "precision",
)


@pytest.fixture(scope="module")
def reference(zh_text_document, tmp_path_factory) -> Path:
    """An uninterrupted 30-step run: logs every step, evaluates and saves every 10, keeps the last 2."""
    save = tmp_path_factory.mktemp("reference")
    output = run(pretrain_args(zh_text_document, save, **REFERENCE_FLAGS))
    (save / "stdout.txt").write_text(output)
    return save


def test_short_run_learns_and_writes_everything(reference):
    losses = [r["loss"] for r in read_metrics(reference / "metrics.jsonl")]
    assert len(losses) == REFERENCE_ITERS
    assert losses[0] > 9.5  # ln(21128) = 9.96 at initialisation
    final = sum(losses[-5:]) / 5
    assert final < losses[0] - 2.0, f"loss fell only from {losses[0]:.3f} to {final:.3f}"

    train = read_metrics(reference / "metrics.jsonl")
    for record in train:
        for key in (
            "iteration",
            "loss",
            "lr",
            "grad_norm",
            "loss_scale",
            "tokens_per_s",
            "tflops",
            "mfu",
            "consumed_samples",
            "step_time_ms",
            "eta_s",
        ):
            assert record[key] is not None, key
    assert [r["iteration"] for r in train] == list(range(1, REFERENCE_ITERS + 1))
    assert [r["consumed_samples"] for r in train] == [16 * i for i in range(1, REFERENCE_ITERS + 1)]
    assert all(r["tokens_per_s"] > 0 and r["tflops"] > 0 and 0 < r["mfu"] < 1 for r in train)
    # Linear warm-up over 10% of 30 steps from 0, then linear decay: step i runs at schedule(i - 1).
    lrs = [r["lr"] for r in train]
    peak, warmup = 2e-3, 3
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(peak / warmup) and lrs[2] == pytest.approx(2 * peak / warmup)
    assert lrs[3] == pytest.approx(peak) and lrs[-1] == pytest.approx(peak * 1 / (REFERENCE_ITERS - warmup))

    evals = read_metrics(reference / "metrics.jsonl", kind="eval")
    assert [r["iteration"] for r in evals] == [10, 20, 30]
    assert all(r["ppl"] == pytest.approx(math.exp(r["loss"])) for r in evals)
    assert evals[-1]["loss"] < evals[0]["loss"]

    stdout = (reference / "stdout.txt").read_text()
    assert "effective configuration:" in stdout
    assert re.search(r"iteration +30/ +30 \| consumed samples: +480 .*MFU: [\d.]+% \| ETA", stdout)
    assert "validation at iteration 30 | lm loss:" in stdout


def test_checkpoints_use_deepspeeds_layout_and_commit_latest(reference):
    assert latest(reference) == "global_step30"
    # keep_last=2 removed global_step10
    assert sorted(p.name for p in reference.glob("global_step*")) == ["global_step20", "global_step30"]
    folder = reference / "global_step30"
    assert {p.name for p in folder.iterdir()} == {
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        CLIENT_STATE_FILE,
    }
    info = json.loads((folder / CLIENT_STATE_FILE).read_text())
    assert list(info) == list(CLIENT_STATE_KEYS)  # the on-disk format, in this order
    assert info["iteration"] == 30 and info["consumed_samples"] == 480 and info["world_size"] == 2
    assert info["vocab_fingerprint"].startswith("sha256:") and info["model_config"]["num_layers"] == 2
    assert info["train_config"]["seq_length"] == 128 and info["precision"] == "fp32"
    assert info["normalization"] == "none"  # the data's text normalisation, recorded for generation and export

    states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert states["global_steps"] == 30 and states["iteration"] == 30
    assert len(states["rng_states"]) == 2 and set(states["rng_states"][0]) == {"python", "numpy", "torch", "cuda"}
    assert "embedding.word_embeddings.weight" in states["module"]
    assert all(states[k] == info[k] for k in info)
    assert list(ClientState.from_dict(states, "model states").to_dict()) == [*CLIENT_STATE_KEYS, "rng_states"]
    shard = torch.load(folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt", map_location="cpu", weights_only=False)
    partitions = shard["optimizer_state_dict"]["single_partition_of_fp32_groups"]
    total = sum(p.numel() for p in states["module"].values() if p.dtype.is_floating_point)
    # ZeRO-1 really shards: rank 1 holds about half of the fp32 master weights (tied weight counted once).
    assert sum(p.numel() for p in partitions) < 0.6 * total

    config = json.loads((reference / "config.json").read_text())
    assert config["deepspeed"]["train_batch_size"] == 16 and config["deepspeed"]["gradient_accumulation_steps"] == 2
    assert config["pretrain"]["train_iters"] == REFERENCE_ITERS and config["world_size"] == 2


def test_tensorboard_events_hold_the_scalars(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(reference / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "train/mfu",
        "valid/loss",
        "valid/ppl",
    } <= tags
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, REFERENCE_ITERS + 1))
    losses = [r["loss"] for r in read_metrics(reference / "metrics.jsonl")]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses, rel=1e-6)


def test_kill_after_step_20_and_resume_matches_bit_for_bit(reference, zh_text_document, tmp_path):
    save = tmp_path / "killed"
    args = pretrain_args(zh_text_document, save, **REFERENCE_FLAGS)
    process = start(args, log=tmp_path / "killed.log")
    wait_for(lambda: latest(save) == "global_step20", process, timeout=240)
    os.killpg(process.pid, signal.SIGKILL)  # every rank and the launcher, no chance to clean up
    process.wait()
    assert not (save / "global_step30").exists(), "the run finished before it could be killed"

    run(args)  # same command again: resumes from `latest`
    resumed = {r["iteration"]: r for r in read_metrics(save / "metrics.jsonl")}
    uninterrupted = {r["iteration"]: r for r in read_metrics(reference / "metrics.jsonl")}
    assert sorted(resumed) == list(range(1, REFERENCE_ITERS + 1))
    for i in range(21, REFERENCE_ITERS + 1):
        for key in ("loss", "lr", "grad_norm", "consumed_samples"):
            assert resumed[i][key] == uninterrupted[i][key], (i, key, resumed[i][key], uninterrupted[i][key])
    evals = {r["iteration"]: r["loss"] for r in read_metrics(save / "metrics.jsonl", kind="eval")}
    assert evals[30] == {r["iteration"]: r["loss"] for r in read_metrics(reference / "metrics.jsonl", "eval")}[30]

    # The same command once more: the run is complete, so nothing is trained and nothing rewritten.
    model_states = save / "global_step30" / "mp_rank_00_model_states.pt"
    before = model_states.stat().st_mtime_ns
    assert "already at iteration 30 of 30: nothing to train" in run(args)
    assert model_states.stat().st_mtime_ns == before and latest(save) == "global_step30"


def test_a_rolled_back_latest_resumes_there_and_keeps_the_newer_checkpoint(reference, zh_text_document, tmp_path):
    """README: `latest` may be pointed at an older checkpoint to roll back. Before, the start deleted the newer
    global_step30 ("left by a save that never finished"). Now the run asks which was meant, and with
    --set-aside-newer-checkpoints resumes at step 20, moves global_step30 aside intact, and trains steps 21-30
    exactly as the first time."""
    save = tmp_path / "rolled_back"
    shutil.copytree(reference, save, ignore=shutil.ignore_patterns("tensorboard", "stdout.txt"))
    (save / "latest").write_text("global_step20")

    def digest(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}

    kept = digest(save / "global_step30")
    args = pretrain_args(zh_text_document, save, **REFERENCE_FLAGS)
    output = run(args, expect_rc=2)
    errors = sorted({line for line in output.splitlines() if line.startswith("error: ")})
    assert errors == [
        f"error: {save}/latest names global_step20, but {save} holds newer complete checkpoint(s): global_step30; "
        "pass --ckpt-step 30 to start from the newest (or --ckpt-step N for another), or "
        "--set-aside-newer-checkpoints to start from global_step20 and rename the newer ones "
        "global_stepN.set-aside-<time> (nothing is deleted)"
    ]
    assert digest(save / "global_step30") == kept

    output = run([*args, "--set-aside-newer-checkpoints"])
    assert f"resumed {save}/global_step20/mp_rank_00_model_states.pt at iteration 20" in output
    (aside,) = save.glob("global_step30.set-aside-*")
    assert digest(aside) == kept and f"--set-aside-newer-checkpoints: moved {save / 'global_step30'}" in output
    assert latest(save) == "global_step30"  # the new one
    resumed = {r["iteration"]: r for r in read_metrics(save / "metrics.jsonl")}
    uninterrupted = {r["iteration"]: r for r in read_metrics(reference / "metrics.jsonl")}
    for i in range(21, REFERENCE_ITERS + 1):
        assert resumed[i]["loss"] == uninterrupted[i]["loss"], i


def test_the_first_log_after_a_resume_averages_the_steps_an_uninterrupted_run_does(zh_text_document, tmp_path):
    """Logging every 2 steps, saving and stopping at step 3 (as a SIGTERM would): the loss logged at step 4
    after the resume averages steps 3 and 4, as the uninterrupted run's does (before: step 4 alone)."""
    flags = dict(train_iters=4, log_interval=2, eval_interval=0, eval_iters=1, save_interval=0)
    uninterrupted = tmp_path / "uninterrupted"
    run(pretrain_args(zh_text_document, uninterrupted, **flags), ranks=None)
    stopped = tmp_path / "stopped"
    run(pretrain_args(zh_text_document, stopped, **flags, exit_interval=3), ranks=None)
    carried = json.loads((stopped / "global_step3" / CLIENT_STATE_FILE).read_text())["unlogged_losses"]
    assert len(carried) == 1 and math.isfinite(carried[0])
    run(pretrain_args(zh_text_document, stopped, **flags), ranks=None)
    mine, theirs = read_metrics(stopped / "metrics.jsonl"), read_metrics(uninterrupted / "metrics.jsonl")
    assert [r["iteration"] for r in mine] == [r["iteration"] for r in theirs] == [2, 4]
    assert mine[1]["loss"] == theirs[1]["loss"] and mine[1]["nonfinite_steps"] == 0
    assert "unlogged_losses" not in json.loads((stopped / "global_step4" / CLIENT_STATE_FILE).read_text())


def test_stage2_starts_from_stage1_weights_with_fresh_state(reference, zh_text_document, tmp_path):
    save = tmp_path / "stage2"
    args = pretrain_args(
        zh_text_document,
        save,
        train_iters=4,
        seq_length=256,
        micro_batch_size=2,
        global_batch_size=8,
        lr=5e-4,
        log_interval=1,
        eval_interval=0,
        save_interval=0,
    )
    output = run(finetune_args(args, reference))  # stage 2 reads stage 1's directory for its weights only
    assert "initialised the weights from" in output and "it has not finished" not in output
    train = read_metrics(save / "metrics.jsonl")
    assert [r["iteration"] for r in train] == [1, 2, 3, 4]
    assert [r["consumed_samples"] for r in train] == [8, 16, 24, 32]
    assert train[0]["lr"] == 0.0 and train[1]["lr"] == pytest.approx(5e-4 / 2)  # a fresh schedule
    stage1_final = read_metrics(reference / "metrics.jsonl", kind="eval")[-1]["loss"]
    assert train[0]["loss"] < stage1_final + 0.5 < 9.0  # trained weights, not a fresh init (9.96)

    info = read_client_state(save, "global_step4")
    assert info.train_config is not None
    assert info.train_config["seq_length"] == 256 and info.consumed_samples == 32
    shard = torch.load(
        save / "global_step4" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", map_location="cpu", weights_only=False
    )
    adam_steps = {int(s["step"]) for s in shard["optimizer_state_dict"]["base_optimizer_state"]["state"].values()}
    assert adam_steps == {4}  # a fresh optimizer: 4 steps, not 30 + 4

    # Resubmitting the stage-2 command resumes stage 2's own checkpoint instead of starting over.
    train_config = TrainConfig.from_dict({**info.train_config, "train_iters": 6})
    start_point = resolve_start(train_config)
    assert (start_point.mode, start_point.directory, start_point.tag) == ("resume", str(save), "global_step4")


def test_bf16_stage2_starts_from_stage1_fp32_masters_not_their_bf16_copies(bf16_checkpoint, zh_text_document, tmp_path):
    """DeepSpeed's load_module_only refreshes the masters from the bf16 module; stage 2 must get stage 1's
    own fp32 masters (written by 3 ranks, read here by 2). Step 1 runs at lr 0, so its masters are exactly
    the ones it started from."""
    save = tmp_path / "stage2_bf16"
    args = bf16_pretrain_args(zh_text_document, save, **LR0_FIRST_STEP, global_batch_size=8, micro_batch_size=4)
    output = run(finetune_args(args, bf16_checkpoint))
    assert re.search(r"fp32 master weights of \d+ parameters set from", output)
    assert read_metrics(save / "metrics.jsonl")[0]["lr"] == 0.0

    stage1, source = read_fp32_weights(bf16_checkpoint / latest(bf16_checkpoint))
    assert source == "zero-fp32-master (bf16 optimizer, 3 ranks)"
    stage2, source = read_fp32_weights(save / "global_step1")
    assert source == "zero-fp32-master (bf16 optimizer, 2 ranks)"
    for name, master in stage1.items():
        assert torch.equal(stage2[name], master), name
    wte = stage1["embedding.word_embeddings.weight"]
    assert not torch.equal(wte, wte.to(torch.bfloat16).float()), "the masters should carry more than bf16"


def test_diverged_run_stops_with_a_clear_error_and_keeps_finite_checkpoints(zh_text_document, tmp_path):
    """lr 1e30: the loss turns non-finite at step 3. Each such step is reported with whether DeepSpeed
    applied its update; the run stops once the tolerance is exceeded, and `latest` never names NaN weights
    (steps whose NaN update was applied are not saved)."""
    save = tmp_path / "diverged"
    args = pretrain_args(
        zh_text_document,
        save,
        train_iters=30,
        lr=1e30,
        lr_warmup_iters=1,
        save_interval=1,
        keep_last=0,
        eval_interval=0,
        eval_iters=1,
        log_interval=1,
        max_nonfinite_steps=2,
    )
    output = run(args, ranks=None, expect_rc=2)
    bad = re.findall(r"iteration (\d+): loss is (?:nan|inf) \(update (APPLIED|skipped) by DeepSpeed", output)
    first = int(bad[0][0])
    assert [int(i) for i, _ in bad] == [first, first + 1, first + 2]
    assert re.search(
        rf"error: loss was non-finite for 3 iterations in a row \({first}-{first + 2}\); last finite "
        rf"loss [\d.]+ at iteration {first - 1}; stopping instead of training on garbage",
        output,
    )
    assert "Traceback" not in output
    applied = [int(i) for i, how in bad if how == "APPLIED"]
    for iteration in applied:
        assert f"not saving at iteration {iteration}: an update from a non-finite loss was applied" in output
    weights, _ = read_fp32_weights(save / latest(save))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert int(latest(save).removeprefix("global_step")) < first + 2  # the failing step saves nothing


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(zh_text_document, tmp_path):
    save = tmp_path / "preempted"
    process = start(
        pretrain_args(zh_text_document, save, train_iters=1000, log_interval=1, eval_interval=0, save_interval=0),
        log=tmp_path / "preempted.log",
    )
    wait_for(lambda: len(read_metrics(save / "metrics.jsonl")) >= 3, process, timeout=240)
    ranks = [
        p
        for p in psutil.Process(process.pid).children(recursive=True)
        if any("--local_rank" in arg for arg in p.cmdline())
    ]
    assert len(ranks) == 2
    for rank in ranks:  # what SLURM does on pre-emption: SIGTERM to every task
        rank.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    log = (tmp_path / "preempted.log").read_text()
    stopped = int(re.search(r"stopping at iteration (\d+) \(SIGTERM\)", log).group(1))
    assert 3 <= stopped < 1000
    assert latest(save) == f"global_step{stopped}"
    assert read_client_state(save, f"global_step{stopped}").consumed_samples == 16 * stopped
    assert read_metrics(save / "metrics.jsonl")[-1]["iteration"] == stopped


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-to-launch-script"])
def test_signal_through_the_launcher_saves_a_checkpoint(how, zh_text_document, tmp_path):
    """Ctrl-C on `deepspeed ...` in a terminal (SIGINT to the whole foreground process group), or SIGTERM
    to a launch/*.sh script alone (what `kill PID` or a scheduler does; the script forwards it to the
    launcher's process group, since DeepSpeed's runner does not): the ranks agree to stop after the same
    step, save, `latest` names that checkpoint, and nothing is left running."""
    save = tmp_path / how
    log = tmp_path / f"{how}.log"
    process = start(
        pretrain_args(zh_text_document, save, train_iters=1000, log_interval=1, eval_interval=0, save_interval=0),
        log=log,
        through_launch_script=how != "ctrl-c",
    )
    wait_for(lambda: len(read_metrics(save / "metrics.jsonl")) >= 3, process, timeout=240)
    ranks = [
        p
        for p in psutil.Process(process.pid).children(recursive=True)
        if any("--local_rank" in arg for arg in p.cmdline())
    ]
    assert len(ranks) == 2
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)  # its status is the launcher's own (non-zero once signalled)
    _, alive = psutil.wait_procs(ranks, timeout=5)
    assert not alive, "ranks outlived the launcher"
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    stopped = int(re.search(rf"stopping at iteration (\d+) \({name}\)", log.read_text()).group(1))
    assert 3 <= stopped < 1000
    assert latest(save) == f"global_step{stopped}"
    assert read_client_state(save, f"global_step{stopped}").consumed_samples == 16 * stopped
    assert sorted(p.name for p in (save / f"global_step{stopped}").glob("*optim_states.pt")) == [
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)
    ]


def test_single_process_without_launcher_and_exit_interval(zh_text_document, tmp_path):
    save = tmp_path / "single"
    output = run(
        pretrain_args(
            zh_text_document, save, train_iters=100, exit_interval=3, log_interval=1, eval_interval=0, eval_iters=1
        ),
        ranks=None,
    )
    assert "rank 0/1" in output and "stopping at iteration 3 (exit_interval)" in output
    train = read_metrics(save / "metrics.jsonl")
    assert [r["iteration"] for r in train] == [1, 2, 3]
    # One rank: the global batch of 16 is 4 micro-batches of 4.
    assert json.loads((save / "config.json").read_text())["deepspeed"]["gradient_accumulation_steps"] == 4
    assert latest(save) == "global_step3"


def test_a_validation_loss_per_source(zh_text_document, tmp_path):
    """--valid-data-path: every evaluation scores each source beside the split, each under its own name
    (stdout, metrics.jsonl, TensorBoard) and on the plot."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megatron_zh.training.plot import loss_curves

    save = tmp_path / "sources"
    args = pretrain_args(zh_text_document, save, train_iters=4, log_interval=2, eval_interval=2, eval_iters=1)
    prefix = zh_text_document["prefix"]
    output = run([*args, "--valid-data-path", f"reviews={prefix}", f"again={prefix}"])
    evals = read_metrics(save / "metrics.jsonl", kind="eval")
    assert [(r["iteration"], r.get("source")) for r in evals] == [
        (2, None),
        (2, "reviews"),
        (2, "again"),
        (4, None),
        (4, "reviews"),
        (4, "again"),
    ]
    # The same corpus under two names: the same samples, the same loss; the split's validation documents differ.
    assert evals[1]["loss"] == evals[2]["loss"] != evals[0]["loss"]
    assert all(r["tokens"] == 16 * 128 for r in evals)
    assert re.search(r"validation \(reviews\) at iteration 4 \| lm loss: [\d.E+-]+ \| lm loss PPL", output)
    events = EventAccumulator(str(save / "tensorboard"))
    events.Reload()
    assert {"valid/loss", "valid/reviews/loss", "valid/again/ppl"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("valid/reviews/loss")] == [2, 4]
    curves = loss_curves(save / "metrics.jsonl")
    assert curves["validation loss: reviews"] == ([2, 4], [evals[1]["loss"], evals[4]["loss"]])
