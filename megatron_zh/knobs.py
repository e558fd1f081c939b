"""A knob is declared once, as a dataclass field; its command-line flag is derived from that field.

    seq_length: int = knob(1024, help="tokens per sample", check=POSITIVE_INT, group="data")

gives the config field (type, default), its validation (`validators.validate_fields`) and the flag
`--seq-length` with that help text. `add_flags` adds one flag per knob of a dataclass to a parser;
`given_values` reads back the flags that were passed, by field name, so a flag can only land in
the field it is named after. Flags default to "not given" (None): a config file's value stands
unless the flag is passed. Fields declared with `flag=False` exist only in config files.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from megatron_zh.validators import CHECK_KEY, Check

KNOB_KEY = "knob"  # the dataclass field metadata key that holds a field's Knob


@dataclass(frozen=True)
class Knob:
    """How a field shows up on the command line."""

    help: str
    group: str | None = None  # argparse group title
    flag: bool = True  # False: a config-file-only field (e.g. a dict)
    aliases: tuple[str, ...] = ()  # extra spellings, e.g. DeepSpeed's --ds_config
    zero_means_off: bool = False  # Megatron's convention: `--save-interval 0` means None ("off")
    switches: bool = False  # a Literal field whose values are flags of their own (--bf16, --fp16)
    metavar: str | None = None
    option: str | None = None  # the flag's spelling when not the field's name (Megatron's --input for `inputs`)
    required: bool = False  # the tool cannot run without it (fields a config file supplies are not required)


def knob(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    check: Check | None = None,
    default_factory: Any = dataclasses.MISSING,
    group: str | None = None,
    flag: bool = True,
    aliases: Sequence[str] = (),
    zero_means_off: bool = False,
    switches: bool = False,
    metavar: str | None = None,
    option: str | None = None,
    required: bool = False,
) -> Any:
    """A dataclass field carrying its help, its check and how its flag is spelled."""
    spec = Knob(help, group, flag, tuple(aliases), zero_means_off, switches, metavar, option, required)
    metadata = {KNOB_KEY: spec, CHECK_KEY: check}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def knob_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Knob]]:
    """The fields of a dataclass that have a command-line flag, in declaration order."""
    return [
        (field, field.metadata[KNOB_KEY])
        for field in dataclasses.fields(cls)
        if KNOB_KEY in field.metadata and field.metadata[KNOB_KEY].flag
    ]


def _value_type(annotation: Any) -> Any:
    """`int | None` -> int; `tuple[str, ...]` -> tuple; a Literal stays itself."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) != 1:
            raise TypeError(f"a knob's type must be one type or None, got {annotation}")
        annotation = members[0]
    if get_origin(annotation) is tuple:
        return tuple
    return annotation


def _help_text(field: dataclasses.Field[Any], spec: Knob) -> str:
    if field.default is dataclasses.MISSING or field.default is None or spec.switches or "(default" in spec.help:
        return spec.help
    default = field.default
    if isinstance(default, bool):
        default = str(default).lower()
    elif isinstance(default, tuple):  # as it is typed on the command line
        default = " ".join(map(str, default))
    return f"{spec.help} (default: {default})"


def add_flags(parser: argparse.ArgumentParser, cls: type) -> dict[str | None, Any]:
    """Add one flag per knob of dataclass `cls` to `parser`, each in its knob's group; returns the groups by
    title (None: the parser itself), so a tool can put flags of its own beside them."""
    groups: dict[str | None, Any] = {None: parser}
    hints = typing.get_type_hints(cls)
    for field, spec in knob_fields(cls):
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        group = groups[spec.group]
        kind = _value_type(hints[field.name])
        if spec.switches:
            exclusive = group.add_mutually_exclusive_group()
            for choice in get_args(kind):
                exclusive.add_argument(
                    f"--{choice}",
                    dest=field.name,
                    action="store_const",
                    const=choice,
                    help=spec.help.format(choice=choice),
                )
            continue
        names = [spec.option or flag_name(field.name), *spec.aliases]
        options: dict[str, Any] = {"dest": field.name, "default": None, "help": _help_text(field, spec)}
        if spec.metavar is not None:
            options["metavar"] = spec.metavar
        if spec.required:
            options["required"] = True
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif kind is tuple:
            options["nargs"] = "+"
        elif get_origin(kind) is Literal:
            options["choices"] = get_args(kind)
        else:
            options["type"] = kind
        group.add_argument(*names, **options)
    return groups


def given_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The knobs of `cls` that were passed on the command line, by field name."""
    values = {}
    for field, spec in knob_fields(cls):
        value = getattr(args, field.name, None)
        if value is None:
            continue
        if spec.zero_means_off and value == 0:
            value = None
        elif isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return values
