"""A CPU run never waits forever on the build lock of a DeepSpeed op whose build was killed.

On CPU, `deepspeed.init_distributed` builds DeepSpeed's shared-memory comm op (deepspeed_shm_comm)
just in time, on every rank, before any rendezvous (deepspeed/comm/torch.py: build_shm_op ->
OpBuilder.load -> torch.utils.cpp_extension.load). torch guards the build folder with a FileBaton:
`<build dir>/lock`, created with O_CREAT|O_EXCL, held open (never written) by the building process and
removed when its build ends; every other process, and every later run even when the op is already
built, polls it with no timeout. A build killed by SIGTERM or SIGKILL (the deepspeed launcher turns
Ctrl-C into SIGTERM for its ranks; `timeout`; the OOM killer) leaves the file, and every later CPU run
then hangs in silence. The process group's timeout cannot help: none exists yet.

How a dead build's lock is told from a live one: the builder holds the file open, and the kernel says
whether anyone on this machine has a file open. A write lease (fcntl F_SETLEASE F_WRLCK) is granted
only when no other open file description of the file exists, whoever holds it (fs/locks.c,
check_conflicting_open); we take it and drop it at once. Where no lease can be had (leases off, not the
file's owner, NFS), /proc/<pid>/fd is scanned instead, and a process of the lock's owner whose
descriptors cannot be read leaves the verdict open. A lock nobody here holds, still the same file
after a short grace (FileBaton.release closes the file a moment before removing it), is stale, if the
folder is on a local file system; on a shared one (NFS, Lustre, ...) a rank of another machine may be
the builder, and only an age far beyond any build's makes it stale.

Nothing here removes a lock: a stale one is refused with one line naming the file to remove.
(Measurements behind this: a build of the op took 93 s on 2 idle cores, 290-330 s on busy ones, with
no file of its folder changing for ~90 s, so neither age nor activity tells a live build from a dead one.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from megatron_zh.errors import ConfigError
from megatron_zh.log import get_logger

logger = get_logger(__name__)

SHM_OP = "deepspeed_shm_comm"  # ShareMemCommBuilder.NAME (deepspeed/ops/op_builder/cpu/comm.py)
SHM_OP_WHAT = "DeepSpeed's shared-memory comm op (deepspeed_shm_comm)"
LOCK_NAME = "lock"  # torch/utils/cpp_extension.py _jit_compile: FileBaton(os.path.join(build_directory, 'lock'))
# File systems other machines may mount too: a process there may hold the lock unseen.
SHARED_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "afs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
     "ocfs2", "gfs2", "9p", "panfs", "wekafs", "virtiofs"}
)  # fmt: skip
SHARED_STALE_AFTER_S = 20 * 60.0  # 4-13 times a measured build


@dataclass(frozen=True)
class Process:
    pid: int
    cmdline: str
    state: str  # /proc/<pid>/stat's state letter; T: stopped

    def describe(self) -> str:
        stopped = " (stopped: `kill -CONT` or end it)" if self.state in ("T", "t") else ""
        return f"pid {self.pid} ({self.cmdline[:80]}){stopped}"


@dataclass(frozen=True)
class LockState:
    path: Path
    verdict: Literal["free", "held", "stale", "unknown"]
    age_s: float = 0.0
    holders: tuple[Process, ...] = ()
    reason: str = ""  # for "unknown" and a likely "stale": why it cannot be certain
    certain: bool = True
    orphans: tuple[Process, ...] = ()  # for "stale": the dead build's compilers, still running in its folder


def extension_build_dir(name: str, environ: Mapping[str, str] = os.environ) -> Path:
    """torch's JIT build folder for extension `name` (cpp_extension._get_build_directory), not created:
    $TORCH_EXTENSIONS_DIR/<name>, else <cache>/torch_extensions/py<ver>_<cpu|cuXY|rocmXY>/<name>."""
    root = environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        import torch

        cache = environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
        if torch.version.hip is not None:
            accelerator = "rocm" + torch.version.hip.replace(".", "")
        elif torch.version.cuda is not None:
            accelerator = "cu" + torch.version.cuda.replace(".", "")
        else:
            accelerator = "cpu"
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(os.path.realpath(os.path.join(cache, "torch_extensions")), f"{python}_{accelerator}")
    return Path(root) / name


def _process(proc: str, pid: int) -> Process:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmdline = ""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            state = f.read().decode(errors="replace").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        state = "?"
    return Process(pid, cmdline or "?", state)


def _uid_of(proc: str, pid: int) -> int | None:
    try:
        return os.stat(f"{proc}/{pid}").st_uid
    except OSError:
        return None


def lock_holders(lock: Path, proc: str = "/proc") -> tuple[list[Process], list[int]]:
    """The processes (of this pid namespace) that have `lock` open, and the pids running as the lock's
    owner whose descriptors we may not read. FileNotFoundError when there is no lock."""
    st = os.stat(lock)
    holders: list[Process] = []
    unreadable: list[int] = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except PermissionError:
            fds, hidden = [], True
        except OSError:  # exited meanwhile
            continue
        else:
            hidden = False
        for fd in fds:
            link = f"{proc}/{pid}/fd/{fd}"
            try:
                if not os.readlink(link).endswith("/" + lock.name):  # cheap filter before stat'ing the target
                    continue
                target = os.stat(link)
            except PermissionError:
                hidden = True
                continue
            except OSError:
                continue
            if (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino):
                holders.append(_process(proc, pid))
                break
        else:
            if hidden and _uid_of(proc, pid) == st.st_uid:  # only the owner's processes can hold it
                unreadable.append(pid)
    return holders, unreadable


def lease_says_open(lock: Path) -> bool | None:
    """Whether any process of this machine has `lock` open; None where the kernel will not say (leases
    disabled or unsupported, not the file's owner). FileNotFoundError when there is no lock."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:  # EAGAIN: open elsewhere; EACCES: not ours; EINVAL: no leases here
        return True if exc.errno in (errno.EAGAIN, errno.EBUSY) else None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def processes_in(folder: Path, proc: str = "/proc") -> list[Process]:
    """Processes whose working directory is `folder`: torch runs ninja there, and the compilers inherit it,
    so killing only the Python process of a build leaves them compiling."""
    real = os.path.realpath(folder)
    found = []
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            try:
                if os.readlink(f"{proc}/{entry.name}/cwd") == real:
                    found.append(_process(proc, int(entry.name)))
            except OSError:
                continue
    return found


def filesystem_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the file system holding `path` (its longest mount point); '' when unknown."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, right.split()[0]
    return fstype


def _look(lock: Path, proc: str) -> tuple[bool | None, list[Process], list[int], os.stat_result]:
    st = os.stat(lock)
    opened = lease_says_open(lock)
    holders, unreadable = lock_holders(lock, proc)
    return (True if holders else opened), holders, unreadable, st


def inspect_build_lock(
    build_dir: Path, *, grace_s: float = 0.5, fs_type: str | None = None, proc: str = "/proc"
) -> LockState:
    """Whether torch's lock in `build_dir` is absent, held by a live process, stale, or cannot be told."""
    lock = build_dir / LOCK_NAME
    try:
        opened, holders, unreadable, first = _look(lock, proc)
        age = max(0.0, time.time() - first.st_mtime)  # never written: its mtime is its creation
        if opened:
            return LockState(lock, "held", age, tuple(holders))
        time.sleep(grace_s)  # between a creator's create and open, or a release's close and remove
        opened, holders, unreadable, again = _look(lock, proc)
    except FileNotFoundError:
        return LockState(lock, "free")
    if (again.st_dev, again.st_ino, again.st_mtime_ns) != (first.st_dev, first.st_ino, first.st_mtime_ns):
        return LockState(lock, "unknown", 0.0, (), "it was replaced meanwhile")  # the next look decides
    if opened:
        return LockState(lock, "held", age, tuple(holders))
    doubts = []
    fstype = filesystem_type(build_dir) if fs_type is None else fs_type
    if fstype in SHARED_FILESYSTEMS or (fstype.startswith("fuse.") and fstype != "fuse.fuse-overlayfs"):
        doubts.append(f"it is on {fstype}, which other machines may share")
    if opened is None:  # no lease: /proc alone, which may not show every process
        if os.geteuid() not in (0, again.st_uid):
            doubts.append(f"it belongs to uid {again.st_uid}, whose processes this one cannot look into")
        elif unreadable:
            doubts.append(f"pid(s) {', '.join(map(str, unreadable[:5]))} could not be looked into")
    orphans = tuple(processes_in(build_dir, proc))
    if not doubts:
        return LockState(lock, "stale", age, (), "no process holds it", orphans=orphans)
    reason = "no process on this machine holds it, but " + "; ".join(doubts)
    if age >= SHARED_STALE_AFTER_S:
        return LockState(lock, "stale", age, (), reason, certain=False, orphans=orphans)
    return LockState(lock, "unknown", age, (), reason)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 2 * 86400 else f"{seconds / 86400:.0f} days"


def stale_message(state: LockState, what: str) -> str:
    """One line: what is wrong, why we think so, the command that fixes it."""
    compilers = ""
    if state.orphans:  # a new build would compile into the files these still write
        compilers = (
            f"; its compilers still run: let them end or `kill {' '.join(str(p.pid) for p in state.orphans[:8])}` first"
        )
    if state.certain:
        return (
            f"stale lock from a killed build of {what} ({_age(state.age_s)} old, no process holds it{compilers}), "
            f"on which torch would wait forever: rm {state.path}"
        )
    return (
        f"likely stale lock from a killed build of {what} ({_age(state.age_s)} old; {state.reason}; a build takes "
        f"minutes{compilers}): if no other machine is building it now, rm {state.path}"
    )


def check_extension_lock(
    name: str,
    what: str,
    *,
    environ: Mapping[str, str] = os.environ,
    poll_s: float = 1.0,
    notice_after_s: float = 10.0,
    max_wait_s: float | None = None,
    grace_s: float = 0.5,
    fs_type: str | None = None,
    proc: str = "/proc",
) -> None:
    """Return once torch could take extension `name`'s build lock; ConfigError (one line) on a stale one.

    While a live process holds it (another rank building the op now) wait, as torch would, but say once,
    after `notice_after_s`, whom for; if that process dies mid-build its lock turns stale and this raises
    instead of waiting forever. `max_wait_s` (None: no limit, as torch) bounds the wait on a live holder.
    """
    build_dir = extension_build_dir(name, environ)
    began = time.monotonic()
    noticed = False
    while True:
        state = inspect_build_lock(build_dir, grace_s=grace_s, fs_type=fs_type, proc=proc)
        if state.verdict == "free":
            return
        if state.verdict == "stale":
            raise ConfigError(stale_message(state, what))
        who = ", ".join(p.describe() for p in state.holders) or state.reason or "a process this one cannot see"
        waited = time.monotonic() - began
        if max_wait_s is not None and waited >= max_wait_s:
            raise ConfigError(f"waited {_age(waited)} for {state.path} (held by {who}); end that build or remove it")
        if not noticed and waited >= notice_after_s:
            logger.warning("waiting for %s to be built: %s is held by %s", what, state.path, who)
            noticed = True
        time.sleep(poll_s)


def deepspeed_jit_builds_shm_op() -> bool:
    """Whether deepspeed.init_distributed will JIT-load deepspeed_shm_comm, taking torch's lock: on DeepSpeed's
    CPU accelerator (the CUDA one has no such op), on Linux, unless the op was compiled into the install
    (DS_BUILD_SHM_COMM=1: OpBuilder.load imports it directly, without a lock)."""
    if sys.platform != "linux":
        return False
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return False
    from deepspeed.git_version_info import accelerator_name, installed_ops

    return not (installed_ops.get(SHM_OP, False) and accelerator_name == "cpu")


def check_deepspeed_shm_lock() -> None:
    """For init_process_group, on every rank, just before deepspeed.init_distributed on CPU."""
    if deepspeed_jit_builds_shm_op():
        check_extension_lock(SHM_OP, SHM_OP_WHAT)
