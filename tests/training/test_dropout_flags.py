"""Megatron's --hidden-dropout / --attention-dropout: knobs of the pretrain block that override the preset.

In-process and fast: the run config is resolved from ds_configs/cpu_tiny.json, no model is trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_runs import CPU_CONFIG

from megatron_zh.errors import ConfigError
from megatron_zh.model import GPT2Model
from megatron_zh.training.config.arguments import build_parser, build_run_config


def write_config(tmp_path: Path, **pretrain: object) -> Path:
    config = json.loads(CPU_CONFIG.read_text())
    config["pretrain"].update(data_path=["base_text_document"], vocab_file="vocab.txt", **pretrain)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def resolve(config: Path, *flags: str):
    return build_run_config(build_parser().parse_args(["--ds_config", str(config), *flags]), world_size=2)


def test_presets_dropout_stands_without_the_flags(tmp_path: Path) -> None:
    run = resolve(write_config(tmp_path))
    assert (run.model.hidden_dropout, run.model.attention_dropout) == (0.1, 0.1)
    assert run.train.model.hidden_dropout is None and run.train.model.attention_dropout is None


def test_flags_override_the_preset_and_zero_turns_dropout_off(tmp_path: Path) -> None:
    run = resolve(write_config(tmp_path), "--hidden-dropout", "0", "--attention-dropout", "0.25")
    assert (run.model.hidden_dropout, run.model.attention_dropout) == (0.0, 0.25)
    # Saved consistently: the pretrain block (train_config in the client state) and the model config agree.
    saved = run.to_dict()
    assert saved["pretrain"]["hidden_dropout"] == 0.0 and saved["model_config"]["hidden_dropout"] == 0.0
    assert saved["pretrain"]["attention_dropout"] == 0.25 and saved["model_config"]["attention_dropout"] == 0.25


def test_the_knobs_win_over_model_overrides_and_can_live_in_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, model_overrides={"hidden_dropout": 0.3}, attention_dropout=0.0)
    run = resolve(config)
    assert (run.model.hidden_dropout, run.model.attention_dropout) == (0.3, 0.0)
    run = resolve(config, "--hidden-dropout", "0.05")
    assert run.model.hidden_dropout == 0.05


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5", "nan"])
def test_out_of_range_rates_are_refused_naming_the_flag(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"hidden_dropout must be in \[0, 1\) or null"):
        resolve(write_config(tmp_path), "--hidden-dropout", value)


def test_zero_dropout_makes_training_mode_deterministic(tmp_path: Path) -> None:
    run = resolve(write_config(tmp_path), "--hidden-dropout", "0", "--attention-dropout", "0")
    torch.manual_seed(0)
    model = GPT2Model(run.model).train()
    tokens = torch.randint(0, run.model.vocab_size, (2, 16))
    assert torch.equal(model(tokens).logits, model(tokens).logits)
