"""Crash-safe writes: the final name appears only when complete, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from megatron_zh.fileio import atomic_write, commit, temporary_sibling


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_gives_the_file_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "out.txt") as f:
            f.write("hello")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").read_text() == "hello"
    assert _mode(tmp_path / "out.txt") == 0o640  # 0o666 & ~0o027, not mkstemp's 0o600


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half of the new content")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_temporary_sibling_and_commit(tmp_path):
    final = tmp_path / "data.bin"
    tmp = temporary_sibling(final)
    assert tmp.parent == tmp_path and tmp.name.startswith(".data.bin.") and not final.exists()
    tmp.write_bytes(b"\x00\x01")
    commit(tmp, final)
    assert final.read_bytes() == b"\x00\x01" and not tmp.exists()


def test_atomic_write_refuses_read_and_append_modes(tmp_path):
    with pytest.raises(ValueError, match="fresh writes"):
        with atomic_write(tmp_path / "x", "a"):
            pass
