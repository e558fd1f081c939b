"""The start guard never destroys a checkpoint: what each kind of folder in a save directory gets at start.

In-process, on copies of real checkpoints (the session's tiny_checkpoint: 2 ranks, fp32 ZeRO-1; and
bf16_checkpoint: 3 ranks, BF16_Optimizer's bf16_zero_pp_rank_* layout), placed as users leave them:
a rolled-back `latest`, a lost `latest`, one checkpoint copied into a new folder, a save killed half-way.
The preflight (validate, every rank) decides; rank 0's `tidy_save_directory` does what was decided. The
DeepSpeed run end to end is tests/integration/test_training.py::test_a_rolled_back_latest_...
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from training_runs import latest, write_config

from megatron_zh.checkpoint.completeness import inspect_checkpoint
from megatron_zh.checkpoint.layout import CLIENT_STATE_FILE, MODEL_STATES_FILE
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.training.checkpointing.start_guard import tidy_save_directory
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.preflight import Preflight, validate

SHARD = "zero_pp_rank_{}_mp_rank_00_optim_states.pt"


def place(source: Path, save: Path, step: int) -> Path:
    """A copy of the real checkpoint folder `source` as save/global_step<step> (its client state says `step`)."""
    target = save / f"global_step{step}"
    shutil.copytree(source, target)
    state = json.loads((target / CLIENT_STATE_FILE).read_text())
    (target / CLIENT_STATE_FILE).write_text(json.dumps({**state, "iteration": step}))
    return target


def fingerprint(folder: Path) -> dict[str, str]:
    """{file name: sha256} of a folder: what it holds, to show a moved folder kept every byte."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def set_latest(save: Path, tag: str | None) -> None:
    if tag is None:
        (save / "latest").unlink(missing_ok=True)
    else:
        (save / "latest").write_text(tag)


def folders(save: Path) -> list[str]:
    return sorted(p.name for p in save.iterdir() if p.name.startswith("global_step"))


@pytest.fixture
def source(tiny_checkpoint) -> Path:
    return tiny_checkpoint["save"] / latest(tiny_checkpoint["save"])


def start(tmp_path: Path, dataset: dict, save: Path, *flags: str, load: str | None = None, world_size: int = 2):
    """validate() of a run with this --save (and --load, by default the same), then rank 0's tidying."""
    config = write_config(tmp_path, dataset, save=str(save), load=str(save) if load is None else load)
    run = build_run_config(build_parser().parse_args(["--ds_config", str(config), *flags]), world_size)
    preflight: Preflight = validate(run)
    moved = tidy_save_directory(run.train, preflight.start, run.zero_stage > 0)
    return preflight.start, moved


def test_a_rolled_back_latest_is_never_deleted_and_needs_a_choice(tmp_path, zh_text_document, source):
    """README says `latest` may be pointed at an older checkpoint. Before, the start deleted the newer one."""
    save = tmp_path / "run"
    place(source, save, 5)
    place(source, save, 10)
    (save / "global_step10_universal").mkdir()  # its universal copy goes where it goes
    kept = fingerprint(save / "global_step10")
    set_latest(save, "global_step5")

    with pytest.raises(ConfigError) as caught:
        start(tmp_path, zh_text_document, save)
    message = str(caught.value)
    assert message == (
        f"{save}/latest names global_step5, but {save} holds newer complete checkpoint(s): global_step10; pass "
        "--ckpt-step 10 to start from the newest (or --ckpt-step N for another), or --set-aside-newer-checkpoints "
        "to start from global_step5 and rename the newer ones global_stepN.set-aside-<time> (nothing is deleted)"
    )
    assert folders(save) == ["global_step10", "global_step10_universal", "global_step5"]

    # Way out 1: --ckpt-step chooses; `latest` is pointed at the choice, nothing else changes.
    point, moved = start(tmp_path, zh_text_document, save, "--ckpt-step", "10")
    assert (point.mode, point.tag, point.chosen_by, moved) == ("resume", "global_step10", "--ckpt-step", [])
    assert latest(save) == "global_step10"
    set_latest(save, "global_step5")
    point, moved = start(tmp_path, zh_text_document, save, "--ckpt-step", "5")
    assert (point.tag, moved, latest(save)) == ("global_step5", [], "global_step5")
    assert fingerprint(save / "global_step10") == kept

    # Way out 2: start from `latest`, the newer ones renamed (with their universal copy), every byte kept.
    point, moved = start(tmp_path, zh_text_document, save, "--set-aside-newer-checkpoints")
    assert point.tag == "global_step5" and len(moved) == 1
    assert moved[0].name.startswith("global_step10.set-aside-") and fingerprint(moved[0]) == kept
    cache = "global_step10_universal" + moved[0].name.removeprefix("global_step10")
    assert folders(save) == sorted(["global_step5", moved[0].name, cache])
    point, moved = start(tmp_path, zh_text_document, save)  # the next start sees nothing newer
    assert (point.tag, moved) == ("global_step5", [])


def test_without_latest_the_newest_complete_checkpoint_is_resumed(tmp_path, zh_text_document, source, caplog):
    """`latest` deleted, or lost in a copy: before, every global_stepN was deleted and training restarted from
    scratch over them. Now the newest complete one is resumed, and only incomplete ones are moved aside."""
    save = tmp_path / "run"
    place(source, save, 6)
    place(source, save, 12)
    (place(source, save, 14) / SHARD.format(1)).unlink()  # a save killed while rank 1 wrote
    (place(source, save, 3) / CLIENT_STATE_FILE).unlink()  # damaged, behind the run: in nobody's way
    kept = {name: fingerprint(save / name) for name in ("global_step6", "global_step12", "global_step14")}
    with caplog.at_level(logging.INFO):
        point, moved = start(tmp_path, zh_text_document, save)
    assert (point.mode, point.tag, point.chosen_by) == ("resume", "global_step12", "newest complete")
    assert (
        f"{save} has no `latest` file: starting from global_step12, the newest complete checkpoint there "
        "(complete: global_step6, global_step12)" in caplog.text
    )
    assert len(moved) == 1 and moved[0].name.startswith("global_step14.incomplete-")
    assert fingerprint(moved[0]) == kept["global_step14"]
    assert (save / "global_step3").is_dir()
    assert f"moved {save / 'global_step14'} to global_step14.incomplete-" in caplog.text
    assert "has no optimizer shard of rank(s) 1 (written by 2 ranks" in caplog.text
    for name in ("global_step6", "global_step12"):
        assert fingerprint(save / name) == kept[name]
    assert latest(save) is None  # nothing committed by a start


@pytest.mark.parametrize("spelling", ["as given", "trailing slash", "dot-dot", "symlink"])
def test_one_checkpoint_copied_into_a_new_folder_is_resumed(tmp_path, zh_text_document, source, spelling):
    save = tmp_path / "copy"
    place(source, save, 12)
    kept = fingerprint(save / "global_step12")
    spelled = {
        "as given": str(save),
        "trailing slash": f"{save}/",
        "dot-dot": f"{tmp_path}/elsewhere/../copy",
        "symlink": str(tmp_path / "link"),
    }[spelling]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(save)
    config = write_config(tmp_path, zh_text_document, save=spelled, load=str(save))
    run = build_run_config(build_parser().parse_args(["--ds_config", str(config)]), 2)
    preflight = validate(run)
    assert (preflight.start.mode, preflight.start.tag) == ("resume", "global_step12")
    assert tidy_save_directory(run.train, preflight.start) == []
    assert folders(save) == ["global_step12"] and fingerprint(save / "global_step12") == kept


def test_a_fresh_start_over_complete_checkpoints_without_latest_is_refused(tmp_path, zh_text_document, source):
    save = tmp_path / "run"
    place(source, save, 12)
    config = write_config(tmp_path, zh_text_document, save=str(save), load=None)
    args = ["--ds_config", str(config)]
    with pytest.raises(ConfigError, match=f"--save {save} already holds checkpoint global_step12, but this run"):
        validate(build_run_config(build_parser().parse_args(args), 2))
    run = build_run_config(build_parser().parse_args([*args, "--override-existing-save"]), 2)
    preflight = validate(run)
    assert preflight.start.mode == "scratch" and tidy_save_directory(run.train, preflight.start) == []
    assert folders(save) == ["global_step12"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "a missing shard": (lambda f: (f / SHARD.format(1)).unlink(), "has no optimizer shard of rank(s) 1"),
    "a truncated shard": (lambda f: _truncate(f / SHARD.format(0)), f"{SHARD.format(0)} is truncated"),
    "truncated model states": (lambda f: _truncate(f / MODEL_STATES_FILE), f"{MODEL_STATES_FILE} is truncated"),
    "an empty model-states file": (lambda f: (f / MODEL_STATES_FILE).write_bytes(b""), "is empty (0 bytes)"),
    "no client_state.json": (lambda f: (f / CLIENT_STATE_FILE).unlink(), f"{CLIENT_STATE_FILE} is missing"),
    "a shard of a third rank": (
        lambda f: shutil.copy(f / SHARD.format(1), f / SHARD.format(2)),
        "holds optimizer files of rank(s) 2, but 2 ranks wrote it",
    ),
    "two layouts": (
        lambda f: (f / SHARD.format(1)).rename(f / ("bf16_" + SHARD.format(1))),
        "mixes two runs",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_an_incomplete_folder_is_moved_aside_not_deleted(tmp_path, zh_text_document, source, damage, caplog):
    change, problem = DAMAGE[damage]
    save = tmp_path / "run"
    place(source, save, 4)
    change(place(source, save, 8))
    assert problem in inspect_checkpoint(save / "global_step8").describe()
    left = fingerprint(save / "global_step8")
    set_latest(save, "global_step4")
    with caplog.at_level(logging.WARNING):
        point, moved = start(tmp_path, zh_text_document, save)
    assert point.tag == "global_step4" and len(moved) == 1
    assert moved[0].name.startswith("global_step8.incomplete-") and fingerprint(moved[0]) == left
    assert problem in caplog.text and "left by a save that never finished" in caplog.text

    if damage == "no client_state.json":
        return  # in the folder `latest` names, that is a checkpoint another tool wrote: read from its model states
    # The same damage in the checkpoint `latest` names: the preflight stops, naming the file, and moves nothing.
    set_latest(save, moved[0].name.split(".")[0])
    moved[0].rename(save / "global_step8")
    with pytest.raises(CheckpointError) as caught:
        start(tmp_path, zh_text_document, save)
    assert problem in str(caught.value)
    assert (
        "checkpoint global_step8 is incomplete or damaged; start from an earlier complete one with --ckpt-step N "
        "(global_step4)" in str(caught.value)
    )
    assert folders(save) == ["global_step4", "global_step8"]


def test_completeness_follows_the_ranks_that_wrote_a_checkpoint(tmp_path, zh_text_document, source, bf16_checkpoint):
    """2 ranks (zero_pp_rank_*) and 3 ranks (bf16_zero_pp_rank_*): complete whatever the run's own world size;
    a rank's file missing is found in either layout."""
    tiny = inspect_checkpoint(source)
    assert tiny.complete and tiny.world_size == 2
    bf16_folder = bf16_checkpoint / latest(bf16_checkpoint)
    bf16 = inspect_checkpoint(bf16_folder)
    assert bf16.complete and bf16.world_size == 3, bf16.describe()
    save = tmp_path / "bf16"
    shutil.copytree(bf16_checkpoint, save, ignore=shutil.ignore_patterns("tensorboard"))
    (save / latest(save) / f"bf16_{SHARD.format(2)}").unlink()
    assert inspect_checkpoint(save / latest(save)).problems == (
        f"{save / latest(save)} has no optimizer shard of rank(s) 2 (written by 3 ranks; {SHARD.format('<r>')})",
    )
    # A 2-rank checkpoint resumed by 3 ranks (a universal copy then) is complete all the same.
    run_save = tmp_path / "run"
    place(source, run_save, 8)
    set_latest(run_save, "global_step8")
    point, moved = start(tmp_path, zh_text_document, run_save, "--global-batch-size", "48", world_size=3)
    assert (point.tag, moved) == ("global_step8", [])
    assert sorted(os.listdir(run_save / "global_step8")) == sorted(os.listdir(source))


def test_a_refused_start_leaves_latest_and_config_json_as_they_were(tmp_path, zh_text_document, source, monkeypatch):
    """Before, a start refused after the preflight (here: a stale build lock of DeepSpeed's CPU comm op; also a
    damaged universal copy) had already pointed `latest` at --ckpt-step's choice and rewritten config.json."""
    from megatron_zh.training import pretrain

    save = tmp_path / "run"
    place(source, save, 4)
    place(source, save, 8)
    set_latest(save, "global_step8")
    (save / "config.json").write_text('{"marker": "the last run\'s configuration"}')
    before = {name: (save / name).read_bytes() for name in ("latest", "config.json")}
    lock = tmp_path / "torch_extensions" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()  # what a build killed mid-way leaves
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(lock.parent.parent))
    # One rank, as a launcher would describe it (main fills in what is missing; these are restored after).
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # main sets torch's threads from it
    config = write_config(tmp_path, zh_text_document, save=str(save), load=str(save))

    with pytest.raises(ConfigError, match="^stale lock from a killed build of DeepSpeed's shared-memory comm op"):
        pretrain.main(["--ds_config", str(config), "--ckpt-step", "4"])
    assert {name: (save / name).read_bytes() for name in ("latest", "config.json")} == before
    assert folders(save) == ["global_step4", "global_step8"] and lock.exists()
