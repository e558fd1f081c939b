"""A stale torch build lock of DeepSpeed's CPU comm op is refused in one line; a live build is waited for.

In-process, with planted locks in a private TORCH_EXTENSIONS_DIR. A live builder is this process holding
the lock open exactly as torch's FileBaton does (os.open O_CREAT|O_EXCL, kept open; close, then remove);
a killed one is a lock nobody holds open. The run that meets a planted lock through pretrain_gpt.py:
tests/integration/test_stale_build_lock.py.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from megatron_zh.errors import ConfigError
from megatron_zh.training.distributed import extension_lock
from megatron_zh.training.distributed.extension_lock import (
    SHM_OP,
    check_extension_lock,
    deepspeed_jit_builds_shm_op,
    extension_build_dir,
    inspect_build_lock,
)

WHAT = "DeepSpeed's shared-memory comm op (deepspeed_shm_comm)"


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    return {"TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}


def build_dir(environ: dict[str, str]) -> Path:
    folder = extension_build_dir(SHM_OP, environ)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def plant(environ: dict[str, str], age_s: float = 0.0) -> Path:
    """What a build killed by SIGTERM or SIGKILL leaves: the lock file, open in no process."""
    lock = build_dir(environ) / "lock"
    lock.touch()
    if age_s:
        os.utime(lock, (time.time() - age_s, time.time() - age_s))
    return lock


def hold(environ: dict[str, str]) -> tuple[Path, int]:
    """A live build: the lock created and kept open, as FileBaton.try_acquire does."""
    lock = build_dir(environ) / "lock"
    return lock, os.open(lock, os.O_CREAT | os.O_EXCL)


def test_the_build_folder_is_torchs(tmp_path, monkeypatch):
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert extension_build_dir(SHM_OP) == Path(_get_build_directory(SHM_OP, False))
    assert extension_build_dir(SHM_OP).parent.name == f"py{sys.version_info.major}{sys.version_info.minor}_cpu"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "x"))
    assert extension_build_dir(SHM_OP) == Path(_get_build_directory(SHM_OP, False)) == tmp_path / "x" / SHM_OP


def test_this_install_jit_builds_the_op_so_the_check_runs():
    """The dev venv's DeepSpeed was installed without DS_BUILD_SHM_COMM: its CPU runs take the lock."""
    assert deepspeed_jit_builds_shm_op()


def test_no_lock_is_free_at_once(environ):
    began = time.monotonic()
    check_extension_lock(SHM_OP, WHAT, environ=environ)
    assert time.monotonic() - began < 0.1


def test_a_planted_lock_is_refused_in_one_line_within_seconds(environ):
    lock = plant(environ, age_s=3 * 3600)
    began = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        check_extension_lock(SHM_OP, WHAT, environ=environ, fs_type="ext4")
    assert time.monotonic() - began < 3  # the grace, not a wait
    assert str(caught.value) == (
        f"stale lock from a killed build of {WHAT} (3.0 h old, no process holds it), on which torch would wait "
        f"forever: rm {lock}"
    )
    assert lock.exists()  # refused, never removed


def test_a_live_build_is_waited_for_and_named(environ, caplog):
    lock, fd = hold(environ)
    state = inspect_build_lock(lock.parent, fs_type="ext4")
    assert state.verdict == "held" and [p.pid for p in state.holders] == [os.getpid()]

    def finish() -> None:  # FileBaton.release: close, then remove
        os.close(fd)
        lock.unlink()

    threading.Timer(1.5, finish).start()
    began = time.monotonic()
    check_extension_lock(SHM_OP, WHAT, environ=environ, poll_s=0.2, notice_after_s=0.5, fs_type="ext4")
    assert 1.0 < time.monotonic() - began < 5 and not lock.exists()
    assert f"waiting for {WHAT} to be built: {lock} is held by pid {os.getpid()}" in caplog.text


def test_a_build_that_dies_while_waited_for_turns_stale(environ):
    lock, fd = hold(environ)
    threading.Timer(1.0, os.close, (fd,)).start()  # killed: the descriptor goes, the file stays
    began = time.monotonic()
    with pytest.raises(ConfigError, match=f"no process holds it\\), on which torch would wait forever: rm {lock}$"):
        check_extension_lock(SHM_OP, WHAT, environ=environ, poll_s=0.2, fs_type="ext4")
    assert 0.8 < time.monotonic() - began < 5 and lock.exists()


def test_a_lock_released_during_the_grace_is_free(environ):
    """FileBaton.release closes the file a moment before removing it: nobody holds it for an instant."""
    lock = plant(environ)
    threading.Timer(0.2, lock.unlink).start()
    assert inspect_build_lock(lock.parent, grace_s=0.6, fs_type="ext4").verdict == "free"


def test_on_a_shared_file_system_only_an_old_lock_is_called_stale(environ):
    """Another machine's rank may be building in an NFS home: a young lock is waited on, an old one refused
    with a hedged line."""
    lock = plant(environ, age_s=60)
    state = inspect_build_lock(lock.parent, fs_type="nfs4", grace_s=0.1)
    assert state.verdict == "unknown" and "it is on nfs4, which other machines may share" in state.reason
    with pytest.raises(ConfigError, match="waited 1 s for .*lock"):  # it would wait on; bounded for the test
        check_extension_lock(SHM_OP, WHAT, environ=environ, poll_s=0.2, max_wait_s=1.0, fs_type="nfs4", grace_s=0.1)
    os.utime(lock, (time.time() - 7200, time.time() - 7200))
    with pytest.raises(ConfigError) as caught:
        check_extension_lock(SHM_OP, WHAT, environ=environ, fs_type="nfs4", grace_s=0.1)
    assert str(caught.value).startswith(f"likely stale lock from a killed build of {WHAT} (2.0 h old; ")
    assert str(caught.value).endswith(f"if no other machine is building it now, rm {lock}")


def fake_proc(root: Path, pid: int, fds: list[Path], cwd: Path | None = None) -> str:
    """A /proc with one process whose descriptors are symlinks to `fds` (readlink and stat as on /proc)."""
    (root / str(pid) / "fd").mkdir(parents=True)
    (root / str(pid) / "cmdline").write_bytes(b"python\0pretrain_gpt.py\0")
    (root / str(pid) / "stat").write_text(f"{pid} (python) S 1 2 3")
    for number, target in enumerate(fds):
        (root / str(pid) / "fd" / str(number + 3)).symlink_to(target)
    if cwd is not None:
        (root / str(pid) / "cwd").symlink_to(cwd)
    return str(root)


def test_without_a_lease_proc_decides_or_leaves_it_open(environ, tmp_path, monkeypatch):
    """Leases off (or NFS, or not the file's owner): /proc/<pid>/fd names the holder; a process of the
    lock's owner whose descriptors cannot be read leaves the verdict open rather than calling it stale."""
    lock = plant(environ, age_s=600)
    monkeypatch.setattr(extension_lock, "lease_says_open", lambda lock: None)
    holding = fake_proc(tmp_path / "p1", 4242, [tmp_path, lock])
    state = inspect_build_lock(lock.parent, fs_type="ext4", proc=holding, grace_s=0.1)
    assert state.verdict == "held" and state.holders[0].pid == 4242 and "pretrain_gpt.py" in state.holders[0].cmdline
    elsewhere = fake_proc(tmp_path / "p2", 4243, [tmp_path])
    assert inspect_build_lock(lock.parent, fs_type="ext4", proc=elsewhere, grace_s=0.1).verdict == "stale"
    monkeypatch.setattr(extension_lock, "lock_holders", lambda lock, proc: ([], [1]))
    state = inspect_build_lock(lock.parent, fs_type="ext4", proc=elsewhere, grace_s=0.1)
    assert state.verdict == "unknown" and "pid(s) 1 could not be looked into" in state.reason
    monkeypatch.setattr(os, "geteuid", lambda: 12345)  # not root, not the lock's owner
    state = inspect_build_lock(lock.parent, fs_type="ext4", proc=elsewhere, grace_s=0.1)
    assert state.verdict == "unknown" and "whose processes this one cannot look into" in state.reason


def test_the_dead_builds_compilers_are_named(environ, tmp_path):
    """SIGTERM to the Python process alone leaves its ninja and compilers running in the build folder."""
    lock = plant(environ, age_s=30)
    proc = fake_proc(tmp_path / "p", 4244, [], cwd=lock.parent)
    state = inspect_build_lock(lock.parent, fs_type="ext4", proc=proc, grace_s=0.1)
    assert state.verdict == "stale" and [p.pid for p in state.orphans] == [4244]
    with pytest.raises(ConfigError, match=r"its compilers still run: let them end or `kill 4244` first\)"):
        check_extension_lock(SHM_OP, WHAT, environ=environ, fs_type="ext4", proc=proc, grace_s=0.1)
