"""What deepspeed.initialize is given: the config as resolved, or, for UER-py's AdamW, our optimizer instead."""

from __future__ import annotations

import copy

import pytest

from megatron_zh.training.engine import deepspeed_arguments

UER_SECTION = {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-6, "bias_correction": False}}


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_uer_adamw_is_ours_and_the_section_leaves_the_deepspeed_config(stage):
    ds = {"optimizer": UER_SECTION, "zero_optimization": {"stage": stage}, "gradient_clipping": 0.0}
    before = copy.deepcopy(ds)
    config, uer_params = deepspeed_arguments(ds)
    assert uer_params == {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-6}
    assert "optimizer" not in config and config["gradient_clipping"] == 0.0
    # ZeRO accepts a client optimizer whose class is not on its list only when told to
    assert config.get("zero_allow_untested_optimizer", False) is (stage > 0)
    assert ds == before  # run.deepspeed keeps the section: config.json and the model card show the file's


def test_other_optimizers_are_deepspeeds_to_build():
    ds = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}, "zero_optimization": {"stage": 1}}
    config, uer_params = deepspeed_arguments(ds)
    assert config is ds and uer_params is None
