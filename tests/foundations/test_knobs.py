"""Every pretrain_gpt.py flag is derived from a knob and lands in the field it is named after.

Walks the parser itself (not a list kept by hand), so a flag added later is covered the day it is
added: each one is passed with a value different from the config file's, and the resolved run must
hold that value in the field of the same name, and nowhere be left unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

import pytest
from training_runs import CPU_CONFIG

from megatron_zh.errors import ConfigError
from megatron_zh.knobs import NESTED_KEY, add_flags, from_flat, given_values, knob, leaves, nested, to_flat, value_of
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.config.deepspeed_config import DeepSpeedOverrides
from megatron_zh.training.config.train_config import TrainConfig
from megatron_zh.validators import POSITIVE_INT, optional, validate_fields

KNOB_CLASSES = (TrainConfig, DeepSpeedOverrides)
LAUNCHER_FLAGS = {"help", "ds_config", "local_rank"}  # not knobs: the file itself and the launcher's rank
INT_CANDIDATES = (2, 8, 4, 3, 7, 1)
FLOAT_CANDIDATES = (0.05, 0.3, 5e-4)


def write_config(tmp_path: Path, name: str, **deepspeed: object) -> Path:
    config = json.loads(CPU_CONFIG.read_text())
    config["pretrain"].update(data_path=["base_text_document"], vocab_file="vocab.txt", save="ckpt", load="ckpt")
    config.update(deepspeed)
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path, "config.json")


def owner_of(dest: str) -> type:
    owners = [cls for cls in KNOB_CLASSES if dest in {leaf.key for leaf in leaves(cls) if leaf.spec.flag}]
    assert len(owners) == 1, f"flag dest {dest!r} is a knob of {owners} (must be exactly one)"
    return owners[0]


def knob_actions() -> list[argparse.Action]:
    return [action for action in build_parser()._actions if action.dest not in LAUNCHER_FLAGS]


def candidate_argvs(action: argparse.Action, base_value: object) -> list[tuple[list[str], object]]:
    """(argv, expected field value) pairs that differ from the base config's value."""
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        return [([flag], True)] if base_value is not True else [([f"--no-{flag[2:]}"], False)]
    if isinstance(action, argparse._StoreConstAction):
        return [([flag], action.const)]
    if action.nargs == "+":
        return [([flag, "other_text_document"], ("other_text_document",))]
    if action.type is int:
        return [([flag, str(v)], v) for v in INT_CANDIDATES if v != base_value]
    if action.type is float:
        return [([flag, str(v)], v) for v in FLOAT_CANDIDATES if v != base_value]
    if action.choices is not None:  # a Literal knob: every other allowed value
        return [([flag, str(v)], v) for v in action.choices if v != base_value]
    if action.dest == "model":
        return [([flag, "gpt2-base"], "gpt2-base")]
    if action.dest == "split":
        return [([flag, "8,1,1"], "8,1,1")]
    return [([flag, "changed"], "changed")]


def test_every_flag_changes_the_field_it_names(tmp_path: Path) -> None:
    # Two base files, so that a switch such as --fp32 also has a run to change (the bf16 one).
    fp32_file, bf16_file = (
        write_config(tmp_path, "fp32.json"),
        write_config(tmp_path, "bf16.json", bf16={"enabled": True}),
    )
    actions = knob_actions()
    assert len(actions) >= len(dataclasses.fields(DeepSpeedOverrides)) + 20  # the walk really walks
    for action in actions:
        config_file = bf16_file if getattr(action, "const", None) == "fp32" else fp32_file
        base = build_run_config(build_parser().parse_args(["--ds_config", str(config_file)]), world_size=2)
        owner = owner_of(action.dest)
        base_value = value_of(base.train, action.dest) if owner is TrainConfig else None
        landed = False
        for argv, expected in candidate_argvs(action, base_value):
            args = build_parser().parse_args(["--ds_config", str(config_file), *argv])
            try:
                run = build_run_config(args, world_size=2)
            except ConfigError:
                continue  # e.g. a micro-batch that does not divide the global batch: try the next value
            if owner is TrainConfig:
                assert value_of(run.train, action.dest) == expected, argv
            else:
                assert getattr(DeepSpeedOverrides(**given_values(args, owner)), action.dest) == expected, argv
            assert run.to_dict() != base.to_dict(), f"{argv} changed nothing in the resolved run"
            landed = True
            break
        assert landed, f"no value of {action.option_strings[0]} produced a valid run"


def test_every_knob_has_a_flag_with_help() -> None:
    dests = {action.dest for action in knob_actions()}
    for cls in KNOB_CLASSES:
        knobs = {leaf.field.name for leaf in leaves(cls) if leaf.owner is cls}
        for field in dataclasses.fields(cls):
            assert field.name in knobs or NESTED_KEY in field.metadata, f"{cls.__name__}.{field.name} is no knob()"
        for leaf in leaves(cls):
            assert leaf.spec.help, f"{leaf.owner.__name__}.{leaf.field.name} has no help text"
            assert leaf.spec.flag == (leaf.key in dests), f"{leaf.owner.__name__}.{leaf.field.name}"


@pytest.mark.parametrize("flag", ["--save-interval", "--eval-interval", "--keep-last", "--exit-interval"])
def test_zero_means_off(config_file: Path, flag: str) -> None:
    run = build_run_config(build_parser().parse_args(["--ds_config", str(config_file), flag, "0"]), 2)
    assert getattr(run.train, flag[2:].replace("-", "_")) is None


def test_flags_are_checked_by_their_knob(config_file: Path) -> None:
    args = build_parser().parse_args(["--ds_config", str(config_file), "--lr", "-1"])
    with pytest.raises(ConfigError, match=r"--lr must be a positive number or null, got -1.0"):
        build_run_config(args, 2)
    args = build_parser().parse_args(["--ds_config", str(config_file), "--seq-length", "0"])
    with pytest.raises(ConfigError, match=r"seq_length must be an integer >= 2, got 0"):
        build_run_config(args, 2)


def test_a_new_dataclass_gets_flags_from_its_declaration() -> None:
    """The derivation is generic: a knob declared once gives type, default, help and check."""

    @dataclasses.dataclass(frozen=True)
    class Example:
        steps: int | None = knob(None, help="how many", check=optional(POSITIVE_INT), zero_means_off=True)
        name: str = knob("x", help="what", flag=False)
        mode: typing.Literal["a", "b"] | None = knob(None, help="which")

        def __post_init__(self) -> None:
            validate_fields(self, "example")

    parser = argparse.ArgumentParser()
    add_flags(parser, Example)
    assert "--name" not in parser._option_string_actions
    args = parser.parse_args(["--steps", "3", "--mode", "b"])
    assert Example(**given_values(args, Example)) == Example(steps=3, mode="b")
    assert given_values(parser.parse_args(["--steps", "0"]), Example) == {"steps": None}
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    with pytest.raises(ConfigError, match="invalid example: steps must be a positive integer or null, got -2"):
        Example(**given_values(parser.parse_args(["--steps", "-2"]), Example))


@dataclasses.dataclass(frozen=True)
class Inner:
    """A config nested in Outer (module level: its annotations must resolve)."""

    length: int = knob(8, help="how long", check=POSITIVE_INT)
    label: str = knob("a", help="what it is called", key="name")

    def __post_init__(self) -> None:
        validate_fields(self, "inner")


@dataclasses.dataclass(frozen=True)
class Outer:
    steps: int = knob(help="how many", check=POSITIVE_INT)
    inner: Inner = nested(Inner)


def test_a_nested_config_keeps_flat_keys_and_flags() -> None:
    """Nested once: the inner knobs are flags and file keys of their own, built into the inner object,
    and written back flat; a key the outer class renames (`key=`) is spelled that way everywhere."""

    parser = argparse.ArgumentParser()
    add_flags(parser, Outer)
    args = parser.parse_args(["--length", "3", "--name", "b", "--steps", "2"])
    built = from_flat(Outer, given_values(args, Outer), "test")
    assert built == Outer(inner=Inner(length=3, label="b"), steps=2)
    assert to_flat(built) == {"steps": 2, "length": 3, "name": "b"}
    assert value_of(built, "name") == "b" and from_flat(Outer, {"steps": 1}, "test").inner == Inner()
    with pytest.raises(ConfigError, match=r"test: unknown key 'lenght'; did you mean 'length'\?"):
        from_flat(Outer, {"lenght": 3, "steps": 1}, "test")
    with pytest.raises(ConfigError, match=r"test: missing steps \(set it there or pass --steps\)"):
        from_flat(Outer, {"length": 3}, "test")
    with pytest.raises(ConfigError, match="invalid inner: length must be a positive integer, got 0"):
        from_flat(Outer, {"length": 0, "steps": 1}, "test")
