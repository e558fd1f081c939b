"""A knob is declared once, as a dataclass field; its command-line flag is derived from that field.

    seq_length: int = knob(1024, help="tokens per sample", check=POSITIVE_INT, group="data")

gives the config field (type, default), its validation (`validators.validate_fields`) and the flag
`--seq-length` with that help text. `add_flags` adds one flag per knob of a dataclass to a parser;
`given_values` reads back the flags that were passed, by key, so a flag can only land in the
field it is named after. Flags default to "not given" (None): a config file's value stands
unless the flag is passed. Fields declared with `flag=False` exist only in config files.

Configs nest once: a field declared with `nested()` holds another dataclass of knobs (the
dataset's config inside the training config), whose knobs keep flat keys and flags (`seq_length`,
`--seq-length`), so a config file and the command line stay as flat as Megatron's.
`from_flat` builds the nested object from flat keys, `to_flat` writes it back.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from megatron_zh.errors import ConfigError
from megatron_zh.validators import CHECK_KEY, Check

KNOB_KEY = "knob"  # the dataclass field metadata key that holds a field's Knob
NESTED_KEY = "knobs_nested"  # ... and the one that marks a field holding a dataclass of knobs


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
    key: str | None = None  # the config-file key (and flag) when not the field's name


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
    key: str | None = None,
) -> Any:
    """A dataclass field carrying its help, its check and how its flag is spelled."""
    spec = Knob(help, group, flag, tuple(aliases), zero_means_off, switches, metavar, option, required, key)
    metadata = {KNOB_KEY: spec, CHECK_KEY: check}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(cls: type) -> Any:
    """A field holding a dataclass of knobs: its knobs keep flat keys and flags (module docstring)."""
    if all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    ):
        return dataclasses.field(default_factory=cls, metadata={NESTED_KEY: cls})
    return dataclasses.field(metadata={NESTED_KEY: cls})


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


@dataclass(frozen=True)
class Leaf:
    """One knob of a (possibly nested) config: where it sits and how it is spelled."""

    path: tuple[str, ...]  # attribute names from the outer dataclass: ("data", "seq_length")
    field: dataclasses.Field[Any]
    spec: Knob
    owner: type  # the dataclass that declares it

    @property
    def key(self) -> str:
        """Its config-file key and flag destination."""
        return self.spec.key or self.field.name


def leaves(cls: type) -> list[Leaf]:
    """Every knob of `cls`, nested ones included, in declaration order."""
    found: list[Leaf] = []
    for field in dataclasses.fields(cls):
        if NESTED_KEY in field.metadata:
            found += [
                dataclasses.replace(leaf, path=(field.name, *leaf.path)) for leaf in leaves(field.metadata[NESTED_KEY])
            ]
        elif KNOB_KEY in field.metadata:
            found.append(Leaf((field.name,), field, field.metadata[KNOB_KEY], cls))
    keys = [leaf.key for leaf in found]
    if len(set(keys)) != len(keys):
        raise TypeError(f"{cls.__name__}: knob keys must be unique, got {sorted(k for k in keys if keys.count(k) > 1)}")
    return found


def knob_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Knob]]:
    """The fields of a dataclass (nested ones included) that have a command-line flag, in declaration order."""
    return [(leaf.field, leaf.spec) for leaf in leaves(cls) if leaf.spec.flag]


def value_of(obj: Any, key: str) -> Any:
    """The value of the knob with config key `key` in `obj`, however deeply nested."""
    for leaf in leaves(type(obj)):
        if leaf.key == key:
            for name in leaf.path:
                obj = getattr(obj, name)
            return obj
    raise KeyError(key)


def from_flat(cls: type, values: Mapping[str, Any], source: str) -> Any:
    """`cls` built from flat keys (a config file's block, flags over it); nested configs are built inside.

    Unknown keys are errors that suggest the key meant; missing required ones say which flag sets them."""
    known = leaves(cls)
    keys = [leaf.key for leaf in known]
    for key in values:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(keys)}"
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
    required = [leaf.key for leaf in known if _required(leaf.field) and leaf.key not in values]
    if required:
        flags = ", ".join(flag_name(key) for key in required)
        raise ConfigError(f"{source}: missing {', '.join(required)} (set it there or pass {flags})")
    return _build(cls, values)


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    arguments = {}
    for field in dataclasses.fields(cls):
        if NESTED_KEY in field.metadata:
            arguments[field.name] = _build(field.metadata[NESTED_KEY], values)
        elif KNOB_KEY in field.metadata:
            key = field.metadata[KNOB_KEY].key or field.name
            if key in values:
                arguments[field.name] = values[key]
    return cls(**arguments)


def to_flat(obj: Any) -> dict[str, Any]:
    """{key: value} of every knob of `obj`, nested ones included (tuples as lists, for JSON)."""
    flat = {}
    for leaf in leaves(type(obj)):
        value = value_of(obj, leaf.key)
        flat[leaf.key] = list(value) if isinstance(value, tuple) else value
    return flat


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


def add_flags(
    parser: argparse.ArgumentParser, cls: type, groups: dict[str | None, Any] | None = None
) -> dict[str | None, Any]:
    """Add one flag per knob of dataclass `cls` (nested ones included) to `parser`, each in its knob's group;
    `groups` are argument groups a tool made already, by title. Returns the groups by title (None: the
    parser itself), so a tool can put flags of its own beside them."""
    groups = {None: parser, **(groups or {})}
    for leaf in leaves(cls):
        field, spec = leaf.field, leaf.spec
        if not spec.flag:
            continue
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        group = groups[spec.group]
        kind = _value_type(typing.get_type_hints(leaf.owner)[field.name])
        if spec.switches:
            exclusive = group.add_mutually_exclusive_group()
            for choice in get_args(kind):
                exclusive.add_argument(
                    f"--{choice}",
                    dest=leaf.key,
                    action="store_const",
                    const=choice,
                    help=spec.help.format(choice=choice),
                )
            continue
        names = [spec.option or flag_name(leaf.key), *spec.aliases]
        options: dict[str, Any] = {"dest": leaf.key, "default": None, "help": _help_text(field, spec)}
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
    """The knobs of `cls` (nested ones included) that were passed on the command line, by key."""
    values = {}
    for leaf in leaves(cls):
        value = getattr(args, leaf.key, None) if leaf.spec.flag else None
        if value is None:
            continue
        if leaf.spec.zero_means_off and value == 0:
            value = None
        elif isinstance(value, list):
            value = tuple(value)
        values[leaf.key] = value
    return values
