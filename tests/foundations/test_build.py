"""setup.py turns a missing or broken C++ compiler into one readable message (no distutils traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def build_ext(repo_root, tmp_path, path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "setup.py",
            "build_ext",
            "--build-temp",
            str(tmp_path / "temp"),
            "--build-lib",
            str(tmp_path / "lib"),
        ],
        cwd=repo_root,
        env={"PATH": path, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration
@pytest.mark.parametrize("compiler", ["missing", "broken"])
def test_compiler_problems_give_a_clear_message(compiler, repo_root, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if compiler == "broken":  # on PATH, but fails on anything (as a half-installed toolchain would)
        for name in ("c++", "g++", "gcc", "cc"):
            fake = bin_dir / name
            fake.write_text("#!/bin/sh\necho 'fake compiler: broken' >&2\nexit 1\n")
            fake.chmod(0o755)
    result = build_ext(repo_root, tmp_path, str(bin_dir))
    assert result.returncode != 0
    expected = (
        "error: no C++ compiler found on PATH."
        if compiler == "missing"
        else "error: compiling megatron_zh._helpers failed:"
    )
    assert expected in result.stderr, result.stderr[-3000:]
    assert "sudo apt-get install g++" in result.stderr and "then run `pip install -e .` again." in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "lib").exists()
