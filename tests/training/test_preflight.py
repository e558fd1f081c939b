"""The preflight: everything DeepSpeed would reject, a --load that does not exist, a --save that a fresh start
would overwrite or cannot write, all found before the process group starts (validate, in this process)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from training_runs import REPO_ROOT, write_config

from megatron_zh.errors import ConfigError
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.config.deepspeed_preflight import check_deepspeed_config
from megatron_zh.training.preflight import validate

MODEL_STATES = "mp_rank_00_model_states.pt"


def preflight(config: Path, *flags: str, world_size: int = 2):
    return validate(build_run_config(build_parser().parse_args(["--ds_config", str(config), *flags]), world_size))


@pytest.mark.parametrize(
    "deepspeed, message",
    [
        ({"optimizer": {"type": "AdamX"}}, "optimizer.type 'AdamX' is not an optimizer DeepSpeed knows; did you mean"),
        (
            {"optimizer": {"params": {"betaz": [0.9, 0.95]}}},
            "optimizer.params.betaz is not a parameter of torch.optim.AdamW; did you mean 'betas'?",
        ),
        ({"optimizer": {"params": {"betas": [1.5, 0.9]}}}, "torch.optim.AdamW rejects them: Invalid beta parameter"),
        (  # passed AdamW's constructor and failed at the first step, after the whole start-up
            {"optimizer": {"params": {"betas": [0.9, 0.95, 0.99]}}},
            "optimizer.params.betas must be two numbers [beta1, beta2] (e.g. [0.9, 0.999]), got [0.9, 0.95, 0.99]",
        ),
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
        (
            {"optimizer": {"params": {"torch_adam": False, "bias_correction": False, "weight_decy": 0.0}}},
            "optimizer.params.weight_decy is not a parameter of UER-py's AdamW (megatron_zh.optim.UerAdamW, "
            "built for \"bias_correction\": false); did you mean 'weight_decay'?",
        ),
        (
            {"optimizer": {"params": {"torch_adam": False, "bias_correction": False, "betas": [0.9, 1.5]}}},
            'UER-py\'s AdamW (megatron_zh.optim.UerAdamW, built for "bias_correction": false) rejects them: betas',
        ),
        (
            {
                "optimizer": {"params": {"torch_adam": False, "bias_correction": False}},
                "zero_optimization": {"offload_optimizer": {"device": "cpu"}},
            },
            "zero_optimization.offload_optimizer cannot run UER-py's AdamW",
        ),
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
    # UER-py's AdamW: DeepSpeed would compile FusedAdam for it (refused on CPU); we build UerAdamW.
    uer = {"optimizer": {"params": {"torch_adam": False, "bias_correction": False, "weight_decay": 0.01}}}
    preflight(write_config(tmp_path, zh_text_document, uer))
    for name in ("stage1.json", "stage2.json", "uer_stage1.json", "uer_stage2.json"):  # as resolved for 8 GPUs
        args = build_parser().parse_args(["--ds_config", str(REPO_ROOT / "ds_configs" / name)])
        run_config = build_run_config(args, 8)
        check_deepspeed_config(run_config.deepspeed, run_config.config_file)


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


@pytest.mark.integration  # mounts a read-only tmpfs
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


def normalised_copy(prefix: str, folder: Path) -> str:
    """The dataset under another name, its metadata saying it was tokenized with --normalize punctuation."""
    import shutil

    copy = str(folder / "normalised_text_document")
    for ext in (".bin", ".idx"):
        shutil.copyfile(prefix + ext, copy + ext)
    meta = json.loads(Path(prefix + ".meta.json").read_text())
    Path(copy + ".meta.json").write_text(json.dumps({**meta, "normalization": "vocab-equivalents/1 punctuation x"}))
    return copy


def test_datasets_tokenized_with_other_normalisations_are_not_mixed(tmp_path, zh_text_document):
    """Training data and validation sources must share one text normalisation; the run records it."""
    copy = normalised_copy(zh_text_document["prefix"], tmp_path)
    config = write_config(tmp_path, zh_text_document, valid_data_path=[f"other={copy}"])
    with pytest.raises(ConfigError, match="different text normalisations .*preprocess them again with one --normalize"):
        preflight(config)
    config = write_config(tmp_path, zh_text_document, valid_data_path=[f"same={zh_text_document['prefix']}"])
    assert preflight(config).normalization == "none"
    config = write_config(tmp_path, {**zh_text_document, "prefix": copy})
    assert preflight(config).normalization == "vocab-equivalents/1 punctuation x"


def test_resuming_on_differently_normalised_data_is_refused(tmp_path, zh_text_document):
    from megatron_zh.checkpoint.client_state import ClientState
    from megatron_zh.training.checkpointing.start import StartPoint, check_compatible

    run = build_run_config(build_parser().parse_args(["--ds_config", str(write_config(tmp_path, zh_text_document))]), 2)
    fingerprint = read_fingerprint(zh_text_document)
    state = ClientState(
        iteration=4,
        consumed_samples=64,
        model_config=run.model.to_dict(),
        vocab_fingerprint=fingerprint,
        vocab_size=21128,
        normalization="vocab-equivalents/1 punctuation x",
        train_config=run.train.to_dict(),
        world_size=2,
        precision="fp32",
    )
    with pytest.raises(
        ConfigError, match="trained on data with text normalisation 'vocab-equivalents/1 punctuation x'"
    ):
        check_compatible(StartPoint("resume", "d", "global_step4", state), run, fingerprint, "none")
    check_compatible(StartPoint("finetune", "d", "global_step4", state), run, fingerprint, "none")  # warns
    check_compatible(StartPoint("resume", "d", "global_step4", state), run, fingerprint, state.normalization)
    older = ClientState.from_dict({**state.to_dict(), "normalization": None}, "old")  # before it was recorded
    check_compatible(StartPoint("resume", "d", "global_step4", older), run, fingerprint, "none")
    with pytest.raises(ConfigError):
        check_compatible(StartPoint("resume", "d", "global_step4", older), run, fingerprint, state.normalization)


def read_fingerprint(dataset: dict) -> str:
    return json.loads(Path(dataset["prefix"] + ".meta.json").read_text())["vocab_fingerprint"]
