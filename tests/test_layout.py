"""The package's shape: every package's map (its docstring) is the code's, and modules stay small.

Each package's `__init__.py` docstring lists its members (modules and sub-packages) with a layer
number, lowest first:

      0  layout, safety     what they hold
      1  client_state       ...

A module may import from its own member of a package and from members of lower layers only, at
every level of the tree (so `data/preprocess` and `data/datasets`, both layer 1 of `data`, never
import each other, and no import cycle between members can exist, type-only imports included).
Every module and sub-package must be on its package's map, and nothing else; no module grows past
MAX_LINES, so each stays one readable page per idea.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import megatron_zh

PACKAGE = Path(megatron_zh.__file__).parent
ROOT = PACKAGE.parent
MAX_LINES = 400
MAP_LINE = re.compile(r"^\s*(\d+)\s{2}(\S.*?)(?:\s{2,}|$)")


def packages() -> list[Path]:
    return sorted(init.parent for init in PACKAGE.rglob("__init__.py"))


def dotted(path: Path) -> str:
    """megatron_zh.data.preprocess for .../megatron_zh/data/preprocess(/__init__.py|.py)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_map(package: Path) -> dict[str, int]:
    """{member: layer} from the package docstring's map."""
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")), clean=False) or ""
    layers = {}
    for line in doc.splitlines():
        if match := MAP_LINE.match(line):
            for name in match.group(2).split(","):
                layers[name.strip()] = int(match.group(1))
    return layers


def members(package: Path) -> set[str]:
    """The package's modules and sub-packages (and the C++ extension at the top)."""
    found = {p.stem for p in package.glob("*.py") if p.name != "__init__.py"}
    found |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    if package == PACKAGE:
        found.add("_helpers")
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every megatron_zh module a file imports (also inside functions and TYPE_CHECKING blocks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            names += [f"{node.module}.{alias.name}" for alias in node.names]  # `from pkg import module`
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.startswith("megatron_zh.") and _exists(name)}
    return found


def _exists(name: str) -> bool:
    relative = Path(*name.split("."))
    return (
        (ROOT / relative).with_suffix(".py").is_file()
        or (ROOT / relative / "__init__.py").is_file()
        or (name == "megatron_zh._helpers")
    )


def violations_of(path: Path, maps: dict[str, dict[str, int]]) -> list[str]:
    own = dotted(path).split(".")
    found = []
    for target in sorted(imported_modules(path)):
        parts = target.split(".")
        # The deepest package both live in decides: their members there must go downwards.
        depth = 0
        while depth < min(len(own), len(parts)) - 1 and own[depth] == parts[depth]:
            depth += 1
        package = ".".join(own[:depth])
        if depth >= len(own) - (path.name == "__init__.py") or depth >= len(parts):
            continue  # a package importing its own members, or a module importing a parent package
        layers = maps[package]
        mine, theirs = own[depth], parts[depth]
        if mine != theirs and layers.get(theirs, 99) >= layers.get(mine, -1):
            found.append(
                f"{path.relative_to(ROOT)}: {package}.{mine} (layer {layers.get(mine)}) imports "
                f"{target} ({package}.{theirs}, layer {layers.get(theirs)})"
            )
    return found


def test_every_package_has_a_map_of_its_members() -> None:
    wrong = []
    for package in packages():
        layers, actual = layer_map(package), members(package)
        missing, extra = sorted(actual - set(layers)), sorted(set(layers) - actual)
        if missing or extra:
            wrong.append(f"{dotted(package)}: not on the map {missing}, on the map but absent {extra}")
    assert not wrong, "update the package docstrings:\n" + "\n".join(wrong)


def test_the_maps_are_parsed() -> None:
    top = layer_map(PACKAGE)
    assert top["errors"] == 0 and top["inference"] > top["convert"] > top["training"] > top["checkpoint"]
    assert top["checkpoint"] > top["model"] > top["ops"]
    data = layer_map(PACKAGE / "data")
    assert data["preprocess"] == data["datasets"] > data["indexed"]


def test_no_import_runs_up_or_across_the_layers() -> None:
    maps = {dotted(package): layer_map(package) for package in packages()}
    violations = [v for path in modules() for v in violations_of(path, maps)]
    assert not violations, "\n".join(violations)


def test_the_check_sees_a_sideways_import(tmp_path) -> None:
    """Siblings of one layer may not import each other: the check would flag datasets -> preprocess."""
    maps = {dotted(package): layer_map(package) for package in packages()}
    probe = PACKAGE / "data" / "datasets" / "probe_for_test_layout.py"
    probe.write_text("from megatron_zh.data.preprocess.config import PreprocessConfig\n", encoding="utf-8")
    try:
        assert any("data.datasets (layer 1) imports" in v for v in violations_of(probe, maps))
    finally:
        probe.unlink()


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"split {path.relative_to(ROOT)} ({lines} lines, limit {MAX_LINES})"
