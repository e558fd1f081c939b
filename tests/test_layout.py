"""The package's shape: the layer map in megatron_zh/__init__.py is the code's, and modules stay small.

Every `megatron_zh.*` import in every module (also the ones inside functions) must go to the same
package or to a lower layer of the map; every module must appear in the map; and no module grows
past MAX_LINES, so each stays one readable page per idea.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import megatron_zh

PACKAGE = Path(megatron_zh.__file__).parent
MAX_LINES = 400


def layer_map() -> dict[str, int]:
    layers = {}
    for line in (megatron_zh.__doc__ or "").splitlines():
        match = re.match(r"^\s+(\d+)\s{2}(\S.*?)\s{2,}", line)
        if match:
            for name in match.group(2).split(","):
                layers[name.strip()] = int(match.group(1))
    return layers


def top_level(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "megatron_zh" else [f"megatron_zh.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("megatron_zh.")}
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_the_layer_map_is_parsed() -> None:
    layers = layer_map()
    assert layers["errors"] == 0 and layers["inference"] > layers["training"] > layers["model"] > layers["ops"]


def test_every_module_is_on_the_map() -> None:
    layers = layer_map()
    missing = sorted({top_level(p) for p in modules()} - set(layers))
    assert not missing, f"add these to the layer map in megatron_zh/__init__.py: {missing}"


def test_no_import_runs_up_the_layers() -> None:
    layers = layer_map()
    violations = []
    for path in modules():
        own = top_level(path)
        for target in imported_packages(path):
            if target != own and layers.get(target, 99) >= layers.get(own, -1):
                violations.append(
                    f"{path.relative_to(PACKAGE.parent)} (layer {layers.get(own)}) imports "
                    f"megatron_zh.{target} (layer {layers.get(target)})"
                )
    assert not violations, "\n".join(violations)


def test_modules_stay_small() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"
