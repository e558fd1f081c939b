"""tools/convert_checkpoint.py takes every format of convert/formats.py by name (--to / --from), with each format's
own flags derived from its options; the per-format tools are the same commands with the format fixed."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_hf
from tool_runs import run_tool

from megatron_zh.checkpoint.weights import load_checkpoint_weights
from megatron_zh.convert.formats import FORMATS


def test_any_format_through_one_tool_round_trips_bit_for_bit(tmp_path, zh_vocab_file, capsys):
    """HF folder -> checkpoint -> UER-py file -> checkpoint, every step by the generic tool: the same weights."""
    hf = make_tiny_hf(tmp_path / "hf", zh_vocab_file)
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_tool("convert_checkpoint", ["--from", "hf", "--input", str(hf), "--output", str(first)]) == 0
    uer = tmp_path / "uer" / "model.bin"
    config = tmp_path / "uer" / "config.json"
    argv = ["--to", "uer", "--checkpoint", str(first), "--output", str(uer), "--uer-config-output", str(config)]
    assert run_tool("convert_checkpoint", argv) == 0
    assert "note: UER-py's LayerNorm" in capsys.readouterr().out  # the format's own report lines
    argv = ["--from", "uer", "--input", str(uer), "--uer-config", str(config), "--vocab-file", str(zh_vocab_file)]
    assert run_tool("convert_checkpoint", [*argv, "--output", str(second)]) == 0
    a, b = load_checkpoint_weights(first), load_checkpoint_weights(second)
    assert a.model_config == b.model_config and a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[name], b.state_dict[name]) for name in a.state_dict)
    assert b.client_state.source == f"UER-py model {uer.resolve()}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--to", "onnx", "--checkpoint", "c", "--output", "o"], "argument --to: invalid choice: 'onnx'"),
        (["--from", "hf", "--output", "o"], "the following arguments are required: --input"),
        (["--to", "hf", "--checkpoint", "c", "--output", "o", "--uer-config-output", "x"], "unrecognized arguments"),
    ],
)
def test_a_format_brings_its_own_flags_and_no_others(argv, message, capsys):
    assert run_tool("convert_checkpoint", argv) == 2
    assert message in capsys.readouterr().err


def test_every_format_names_what_tools_need():
    for name, spec in FORMATS.items():
        assert spec.name == name and (spec.importer or spec.exporter)
        if spec.exporter is not None:
            assert spec.exporter.output_what and spec.exporter.report is not None
