"""The value checks every config dataclass and tool uses: one definition of "a positive integer".

A `Check` knows what it accepts and how to say so; `problem` words the error the way all of
megatron_zh's config errors read (`seq_length must be a positive integer, got 0`). Dataclasses
attach checks to their fields (see `knobs.knob`) and run them all with `validate_fields`, so a
range is written once, beside the field it guards.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from megatron_zh.errors import ConfigError

CHECK_KEY = "check"  # the dataclass field metadata key that holds a field's Check


@dataclass(frozen=True)
class Check:
    """A predicate with the words for what it expects ("a positive integer", "in [0, 1)")."""

    accepts: Callable[[Any], bool]
    expected: str

    def problem(self, name: str, value: Any) -> str | None:
        """None when `value` passes, else "NAME must be EXPECTED, got VALUE"."""
        if self.accepts(value):
            return None
        return f"{name} must be {self.expected}, got {value!r}"

    def __call__(self, name: str, value: Any) -> Any:
        """Return `value`, or raise ConfigError with the problem."""
        problem = self.problem(name, value)
        if problem is not None:
            raise ConfigError(problem)
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(low: int) -> Check:
    words = "a positive integer" if low == 1 else f"an integer >= {low}"
    return Check(lambda v: _is_int(v) and v >= low, words)


def int_below(high: int, high_text: str, low: int = 0) -> Check:
    """An integer in [low, high); `high_text` spells the bound (e.g. "2**32")."""
    return Check(lambda v: _is_int(v) and low <= v < high, f"an integer in [{low}, {high_text})")


def number_in(low: float, high: float, *, low_open: bool = False, high_open: bool = True) -> Check:
    """A finite number in an interval; brackets follow the usual notation."""

    def accepts(value: Any) -> bool:
        if not _is_number(value):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    return Check(accepts, f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")


def one_of(choices: Iterable[Any]) -> Check:
    allowed = tuple(choices)
    return Check(lambda v: v in allowed, f"one of {allowed}")


def optional(check: Check) -> Check:
    """The same check, or null (None)."""
    return Check(lambda v: v is None or check.accepts(v), f"{check.expected} or null")


POSITIVE_INT = int_at_least(1)
NON_NEGATIVE_INT = int_at_least(0)
POSITIVE_NUMBER = Check(lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Check(lambda v: _is_number(v) and v >= 0, "a number >= 0")
FRACTION = number_in(0.0, 1.0)  # [0, 1): dropout rates, warm-up fractions
PROBABILITY = number_in(0.0, 1.0, low_open=True, high_open=False)  # (0, 1]: nucleus mass
BOOLEAN = Check(lambda v: isinstance(v, bool), "true or false")
NON_EMPTY_STRING = Check(lambda v: isinstance(v, str) and bool(v), "a non-empty string")
SEED = int_below(2**32, "2**32")  # numpy's RandomState takes 32-bit seeds


def checked(check: Check, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field guarded by `check` (see validate_fields); `knobs.knob` is one with a flag too."""
    return dataclasses.field(default=default, metadata={CHECK_KEY: check})


def field_problems(obj: Any, label: Callable[[str], str] = str) -> list[str]:
    """Every failed field check of a dataclass instance, in field order; `label` names a field (e.g. as a flag)."""
    problems = []
    for field in dataclasses.fields(obj):
        check = field.metadata.get(CHECK_KEY)
        if check is not None:
            problem = check.problem(label(field.name), getattr(obj, field.name))
            if problem is not None:
                problems.append(problem)
    return problems


def raise_problems(what: str, problems: list[str]) -> None:
    """One ConfigError listing every problem ("invalid WHAT: a; b"), or nothing when there are none."""
    if problems:
        raise ConfigError(f"invalid {what}: " + "; ".join(problems))


def validate_fields(obj: Any, what: str, label: Callable[[str], str] = str) -> None:
    """Run every field check of a dataclass instance; raise one ConfigError naming them all."""
    raise_problems(what, field_problems(obj, label))
