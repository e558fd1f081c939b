"""tools/<name>.py run in this process through run_cli, as the command line runs it (tools are scripts, not a
package), for tests that read its exit status and what it printed with capsys."""

from __future__ import annotations

import importlib.util

import pytest
from repo_paths import TOOLS

from megatron_zh.cli import run_cli


def run_tool(name: str, argv: list[str]) -> int:
    """The exit status of tools/<name>.py with `argv`."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None, name
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, argv)
    return exit_info.value.code
