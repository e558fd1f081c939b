"""Resuming on another data-parallel size: 3 ranks -> 2 ranks -> 1 rank, optimizer state included.

Real DeepSpeed ZeRO-1 engines on CPU (gloo) through the command users type. With dropout off, every
step's loss after each resume equals the uninterrupted single-rank run's (same global batch of 12:
micro-batch 2 with accumulation 2 / 3 / 6 on 3 / 2 / 1 ranks) up to float32 reduction order, and the
universal checkpoint DeepSpeed converts holds exactly the Adam moments the 3 ranks saved. The checks
that need no training (cache reuse, refusals) run in-process on the checkpoints those runs wrote.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from hostile import poison
from training_runs import bf16_pretrain_args, latest, pretrain_args, run

from megatron_zh.checkpoint.client_state import read_client_state
from megatron_zh.checkpoint.layout import LATEST_UNIVERSAL_FILE, MODEL_STATES_FILE
from megatron_zh.checkpoint.master_weights import read_fp32_weights
from megatron_zh.checkpoint.safety import trusting_checkpoints
from megatron_zh.checkpoint.universal import CACHE_MARKER
from megatron_zh.errors import CheckpointError
from megatron_zh.model import GPT2Config
from megatron_zh.training.checkpointing.resume import prepare_resume
from megatron_zh.training.checkpointing.save import prune_checkpoints
from megatron_zh.training.checkpointing.start import StartPoint
from megatron_zh.training.config.run_config import RunConfig
from megatron_zh.training.config.train_config import TrainConfig
from megatron_zh.training.distributed.process_group import DistEnv
from megatron_zh.training.metrics import read_metrics

ITERS = 6
# Deterministic steps (no dropout), a tiny global batch that 3, 2 and 1 ranks all divide into micro-batches of 2.
FLAGS = dict(
    train_iters=ITERS,
    global_batch_size=12,
    micro_batch_size=2,
    seq_length=64,
    lr_warmup_iters=1,
    hidden_dropout=0,
    attention_dropout=0,
    save_interval=2,
    keep_last=0,
    eval_interval=0,
    eval_iters=1,
    log_interval=1,
)
MOMENTS = ("exp_avg", "exp_avg_sq")


def consolidate(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"fp32" | "exp_avg" | "exp_avg_sq": {parameter: full tensor}} from a checkpoint's ZeRO-1 shards.

    Rank r's file holds its contiguous slice of each parameter group's flat vector (fp32 masters under
    single_partition_of_fp32_groups, moments under base_optimizer_state.state[group]); in rank order the
    slices are the parameters of param_shapes back to back, then the group's end padding.
    """
    shapes = torch.load(folder / MODEL_STATES_FILE, map_location="cpu", weights_only=False)["param_shapes"]
    files = sorted(folder.glob("*zero_pp_rank_*_optim_states.pt"), key=lambda p: int(p.name.split("_")[-6]))
    optims = [torch.load(p, map_location="cpu", weights_only=False)["optimizer_state_dict"] for p in files]
    result: dict[str, dict[str, torch.Tensor]] = {"fp32": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for group, group_shapes in enumerate(shapes):
        flat = {"fp32": torch.cat([o["single_partition_of_fp32_groups"][group] for o in optims])}
        for key in MOMENTS:
            flat[key] = torch.cat([o["base_optimizer_state"]["state"][group][key] for o in optims])
        offset = 0
        for index, (name, shape) in enumerate(group_shapes.items()):
            numel = math.prod(shape)
            for key, values in flat.items():
                result[key][name] = values[offset : offset + numel].view(tuple(shape))
            offset += numel + int(optims[0]["param_alignment_paddings"][group][index])
    return result


def adam_steps(folder: Path) -> set[int]:
    steps = set()
    for path in folder.glob("*zero_pp_rank_*_optim_states.pt"):
        state = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        steps |= {int(s["step"]) for s in state["base_optimizer_state"]["state"].values()}
    return steps


def universal_state(cache: Path, name: str, key: str) -> torch.Tensor:
    """zero/<name>/<key>.pt of a universal checkpoint: {"param": tensor, "cat_dim": ...}; the step is bare."""
    value = torch.load(cache / "zero" / name / f"{key}.pt", map_location="cpu", weights_only=True)
    return value["param"] if isinstance(value, dict) else value


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(a.abs().max().item(), b.abs().max().item())
    return 0.0 if scale == 0 else (a - b).abs().max().item() / scale


def start_at(save: Path, tag: str) -> StartPoint:
    """What validation.resolve_start gives a resume of checkpoint `tag`."""
    return StartPoint("resume", str(save), tag, read_client_state(save, tag))


def run_config(start: StartPoint) -> RunConfig:
    """The RunConfig of a resume of `start` on one rank (prepare_resume reads its ZeRO stage)."""
    assert start.info is not None
    return RunConfig(
        train=TrainConfig.from_dict(start.info.train_config),
        model=GPT2Config.from_dict(start.info.model_config),
        deepspeed={"zero_optimization": {"stage": 1}},
        world_size=1,
        config_file="test",
    )


def single_rank() -> DistEnv:
    return DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, launched_by="single")


@pytest.fixture(scope="module")
def uninterrupted(zh_text_document, tmp_path_factory) -> Path:
    """The same 6 steps on one rank without a stop (global batch 12 = 6 micro-batches of 2)."""
    save = tmp_path_factory.mktemp("uninterrupted")
    run(pretrain_args(zh_text_document, save, **FLAGS), ranks=None, timeout=600)
    return save


@pytest.fixture(scope="module")
def elastic(zh_text_document, tmp_path_factory) -> dict:
    """Steps 1-2 on 3 ranks, 3-4 on 2 ranks, 5-6 on 1 rank, each a resubmission of the same command."""
    save = tmp_path_factory.mktemp("elastic") / "checkpoints"
    outputs = {}
    for ranks, stop in ((3, 2), (2, 4), (1, 6)):
        args = pretrain_args(zh_text_document, save, **FLAGS, **({"exit_interval": stop} if stop < ITERS else {}))
        outputs[ranks] = run(args, ranks=ranks if ranks > 1 else None, timeout=600)
        assert latest(save) == f"global_step{stop}"
    return {"save": save, "outputs": outputs}


def test_losses_after_each_resume_match_the_uninterrupted_run(elastic, uninterrupted):
    outputs = elastic["outputs"]
    assert "universal" not in outputs[3]
    for saved, ranks, step in ((3, 2, 2), (2, 1, 4)):
        line = re.search(
            rf"checkpoint \S+/global_step{step} was written by {saved} rank\(s\), this run has {ranks}: "
            rf"converted it to a universal checkpoint \(DeepSpeed\) in [\d.]+ s, [\d.]+ MB cached at "
            rf"(\S+/global_step{step}_universal)\n",
            outputs[ranks],
        )
        assert line, outputs[ranks][-3000:]
        assert (
            f"resumed {line.group(1)}/{MODEL_STATES_FILE} at iteration {step}, {12 * step} samples consumed"
            in (outputs[ranks])
        )
        assert "Traceback" not in outputs[ranks]

    resumed = read_metrics(elastic["save"] / "metrics.jsonl")
    reference = read_metrics(uninterrupted / "metrics.jsonl")
    assert [r["iteration"] for r in resumed] == [r["iteration"] for r in reference] == list(range(1, ITERS + 1))
    for mine, theirs in zip(resumed, reference, strict=True):
        assert mine["consumed_samples"] == theirs["consumed_samples"] == 12 * mine["iteration"]
        assert mine["lr"] == theirs["lr"], mine["iteration"]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4), mine["iteration"]
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4), mine["iteration"]
    assert resumed[-1]["loss"] < resumed[0]["loss"] - 0.3  # it trained: 6 real optimizer steps

    # Whose checkpoint is whose: each segment saved with its own world size and continued the Adam steps.
    save = elastic["save"]
    for step, ranks in ((2, 3), (4, 2), (6, 1)):
        assert read_client_state(save, f"global_step{step}").world_size == ranks
        assert adam_steps(save / f"global_step{step}") == {step}


def test_universal_checkpoint_holds_the_saved_moments_and_masters(elastic):
    save = elastic["save"]
    for step in (2, 4):
        shards = consolidate(save / f"global_step{step}")
        cache = save / f"global_step{step}_universal"
        for key, tensors in shards.items():
            for name, tensor in tensors.items():
                assert torch.equal(universal_state(cache, name, key), tensor), (step, key, name)
        steps = {float(universal_state(cache, name, "step")) for name in shards["fp32"]}
        assert steps == {float(step)}
        assert json.loads((cache / CACHE_MARKER).read_text())["source"] == f"global_step{step}"
        # The unchanged model-states file is the checkpoint's own, hard-linked rather than copied.
        assert (cache / MODEL_STATES_FILE).samefile(save / f"global_step{step}" / MODEL_STATES_FILE)
    assert (save / LATEST_UNIVERSAL_FILE).read_text() == "global_step4_universal"
    assert not list(save.glob(".*.tmp")), "a staging folder was left behind"


def test_the_resized_runs_hold_the_uninterrupted_runs_optimizer_state(elastic, uninterrupted):
    """After a resume, what the M-rank engine saves matches the uninterrupted run's state at that step:
    masters and both moments (up to float32 reduction order), not a fresh optimizer."""
    for step in (4, 6):
        mine = consolidate(elastic["save"] / f"global_step{step}")
        theirs = consolidate(uninterrupted / f"global_step{step}")
        for key in ("fp32", *MOMENTS):
            for name, tensor in theirs[key].items():
                assert relative_difference(mine[key][name], tensor) < 1e-4, (step, key, name)


def test_a_second_resume_reuses_the_cache(elastic):
    save = elastic["save"]
    start = start_at(save, "global_step4")  # written by 2 ranks, converted when the 1-rank run resumed it
    marker = save / "global_step4_universal" / CACHE_MARKER
    before = marker.stat().st_mtime_ns
    resized = prepare_resume(start, run_config(start), single_rank())
    assert resized == dataclasses.replace(start, universal="global_step4_universal")
    assert marker.stat().st_mtime_ns == before  # not converted again
    # The same world size as the save: nothing to do.
    same = start_at(save, "global_step6")
    assert prepare_resume(same, run_config(same), single_rank()) is same


def test_an_incomplete_or_unconvertible_checkpoint_stops_with_one_line(elastic, tmp_path):
    source = elastic["save"] / "global_step2"  # 3 ranks
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copytree(source, broken / "global_step2")
    (broken / "latest").write_text("global_step2")
    (broken / "global_step2" / "zero_pp_rank_2_mp_rank_00_optim_states.pt").unlink()
    start = start_at(broken, "global_step2")
    with pytest.raises(CheckpointError, match=r"written by 3 rank\(s\) but holds optimizer files for 2; .*incomplete"):
        prepare_resume(start, run_config(start), single_rank())

    shard = broken / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated: found before DeepSpeed's converter reads it
    shutil.copy(source / "zero_pp_rank_2_mp_rank_00_optim_states.pt", broken / "global_step2")
    with pytest.raises(CheckpointError, match=rf"^{shard} is truncated \(1000 bytes: .*the checkpoint is damaged"):
        prepare_resume(start, run_config(start), single_rank())
    torch.save({"optimizer_state_dict": {}}, shard)  # readable, but not what DeepSpeed's converter needs
    with pytest.raises(
        CheckpointError,
        match=r"written by 3 rank\(s\), this run has 1; DeepSpeed could not convert it to a universal "
        r"checkpoint \(.*\); resume on 3 rank\(s\), or start from its weights only with --finetune",
    ):
        prepare_resume(start, run_config(start), single_rank())
    assert sorted(p.name for p in broken.iterdir()) == ["global_step2", "latest"]  # no cache, no staging left


def test_a_payload_planted_in_the_universal_cache_is_refused(elastic, zh_text_document, tmp_path):
    """The cache is reused while its source files are unchanged, and DeepSpeed's universal loader torch.loads
    its zero/<param>/*.pt with weights_only=False: before, a payload planted there ran on the next resume on
    another rank count. Now every file of the cache passes the restricted unpickler first, reused or not."""
    save = tmp_path / "planted"
    shutil.copytree(elastic["save"], save, ignore=shutil.ignore_patterns("tensorboard"))
    planted = sorted((save / "global_step4_universal" / "zero").glob("*/fp32.pt"))[0]
    marker = tmp_path / "pwned"
    poison(planted, marker)
    start = start_at(save, "global_step4")  # written by 2 ranks: 1 rank goes through the cache
    with pytest.raises(CheckpointError) as caught:
        prepare_resume(start, run_config(start), single_rank())
    assert str(caught.value).startswith(f"{planted} needs global posix.system, which is not on the checkpoint")
    cache = save / "global_step4_universal"
    assert str(caught.value).endswith(
        f"(it is in the universal copy cached at {cache}: delete that folder to convert again)"
    )
    with trusting_checkpoints(True):
        assert prepare_resume(start, run_config(start), single_rank()).universal == "global_step4_universal"
    assert not marker.exists()

    # The command users type: one line, exit status 2, nothing run; --trust-checkpoint is the way past.
    args = pretrain_args(zh_text_document, save, **FLAGS, ckpt_step=4)
    output = run(args, ranks=None, timeout=600, expect_rc=2)
    assert "Traceback" not in output and not marker.exists()
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{planted} needs global posix.system" in errors[0], errors
    output = run([*args, "--trust-checkpoint"], ranks=None, timeout=600)
    assert marker.exists(), "trusted: DeepSpeed's loader unpickles the cache without restriction"
    assert "resumed" in output and latest(save) == "global_step6"
    # The step-6 checkpoint of the earlier history was moved aside by the save that replaced it, not deleted.
    assert len(list(save.glob("global_step6.replaced-*"))) == 1


def test_pruning_a_checkpoint_removes_its_universal_copy(elastic, tmp_path):
    save = tmp_path / "pruned"
    shutil.copytree(elastic["save"], save, ignore=shutil.ignore_patterns("tensorboard"))
    prune_checkpoints(save, keep_last=1)
    assert sorted(p.name for p in save.glob("global_step*")) == ["global_step6"]
    assert not (save / LATEST_UNIVERSAL_FILE).exists()


def test_bf16_checkpoint_resumes_on_fewer_ranks(bf16_checkpoint, zh_text_document, tmp_path):
    """DeepSpeed's BF16_Optimizer layout (bf16_zero_pp_rank_* files, 3 ranks) resumed on 2: the universal
    copy holds the fp32 masters (not their bf16 copies) and the run continues the Adam step count."""
    save = tmp_path / "bf16"
    shutil.copytree(bf16_checkpoint, save)
    args = bf16_pretrain_args(
        zh_text_document,
        save,
        train_iters=4,
        lr_warmup_iters=1,
        save_interval=1,
        eval_interval=0,
        eval_iters=1,
        log_interval=1,
        global_batch_size=12,
        micro_batch_size=2,
    )
    output = run(args, ranks=2, timeout=600)
    assert re.search(r"written by 3 rank\(s\), this run has 2: converted it to a universal checkpoint", output)
    masters, source = read_fp32_weights(save / "global_step3")
    assert source == "zero-fp32-master (bf16 optimizer, 3 ranks)"
    for name, master in masters.items():
        assert torch.equal(universal_state(save / "global_step3_universal", name, "fp32"), master), name
    assert adam_steps(save / "global_step4") == {4}
    assert math.isfinite(read_metrics(save / "metrics.jsonl")[-1]["loss"])
