"""Storage errors end every data/convert tool with one line naming the path, and leave no partial output.

Three ways the storage fails, for each tool:
- a path where a file stands where a directory is needed (real, everywhere);
- a full disk: `os.fsync` failing with ENOSPC for files below the output (injected; every writer
  fsyncs before its rename), and, as root, a real 1 MB tmpfs filled to the last block;
- a read-only file system: as root, a real tmpfs remounted read-only (`chmod` does not stop root).
Without root (or where mount is not allowed) the real-mount cases skip.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from repo_paths import REPO_ROOT as REPO
from tiny_models import make_tiny_hf
from tool_runs import run_tool

from megatron_zh.storage import describe_os_error, naming

Argv = Callable[[Path], list[str]]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, zh_corpus_file) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_bytes(b"".join(zh_corpus_file.read_bytes().splitlines(keepends=True)[:200]))
    return path


@pytest.fixture(scope="module")
def tools(tmp_path_factory, zh_corpus_file, zh_vocab_file, zh_text_document, small_corpus) -> dict[str, Argv]:
    """Each tool's command line writing below a folder OUT (its outputs are over 1 MB, or written last)."""
    hf = make_tiny_hf(tmp_path_factory.mktemp("hf") / "tiny", zh_vocab_file)
    checkpoint = tmp_path_factory.mktemp("ckpt") / "ckpt"
    assert run_tool("convert_from_hf", ["--hf", str(hf), "--output", str(checkpoint)]) == 0
    vocab = str(zh_vocab_file)
    return {
        "preprocess_data": lambda out: [
            *("--input", str(zh_corpus_file), "--output-prefix", str(out / "clue"), "--vocab-file", vocab),
        ],
        "merge_datasets": lambda out: ["--input", zh_text_document["prefix"], "--output-prefix", str(out / "merged")],
        "build_vocab": lambda out: [
            *("--input", str(small_corpus), "--output", str(out / "vocab.txt"), "--vocab-size", "3000"),
        ],
        "convert_from_hf": lambda out: ["--hf", str(hf), "--output", str(out / "ckpt")],
        "convert_to_hf": lambda out: [
            *("--checkpoint", str(checkpoint), "--output", str(out / "hf"), "--vocab-file", vocab),
        ],
        "fetch_assets": lambda out: ["--cache-dir", str(out / "cache"), "--only", "vocab"],
    }


def one_line_naming(err: str, path: Path, *errnames: str) -> None:
    """The tool ended with one `error:` line naming `path` (before it: only its own progress output)."""
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("error")] == lines[-1:] and "Traceback" not in err, err
    assert str(path) in lines[-1] and any(f"({name})" in lines[-1] for name in errnames), err


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


TOOLS = ["preprocess_data", "merge_datasets", "build_vocab", "convert_from_hf", "convert_to_hf", "fetch_assets"]


def test_describe_os_error():
    line = describe_os_error(OSError(errno.EROFS, "Read-only file system", "/data/x.bin"))
    assert line == (
        "cannot write /data/x.bin: Read-only file system (EROFS); the file system is read-only; "
        "write the output somewhere writable"
    )
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device")).startswith("cannot write the output:")
    assert describe_os_error(OSError(errno.ECONNREFUSED, "Connection refused")) is None  # not storage: a traceback
    with pytest.raises(OSError) as info, naming("/data/out.idx"):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/.out.idx.host-1.abc.tmp")
    assert info.value.filename == "/data/out.idx" and info.value.errno == errno.ENOSPC


@pytest.mark.parametrize("tool", TOOLS)
def test_a_file_where_a_directory_is_needed(tool, tools, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    assert run_tool(tool, tools[tool](blocker / "sub")) == 2
    one_line_naming(capsys.readouterr().err, blocker, "ENOTDIR", "EEXIST")
    assert all_files(tmp_path) == ["blocker"]


@pytest.mark.parametrize("tool", [t for t in TOOLS if t != "fetch_assets"])  # fetch_assets would download
def test_disk_full_at_fsync(tool, tools, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    assert run_tool(tool, tools[tool](out)) == 2
    one_line_naming(capsys.readouterr().err, out, "ENOSPC")
    assert all_files(out) == []  # not a byte of partial output, not a temporary


@contextlib.contextmanager
def tmpfs(folder: Path, *options: str) -> Iterator[Path]:
    """A 1 MB tmpfs at `folder` (remounted with `options`), unmounted afterwards; skips where mount is denied."""
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        if options:
            subprocess.run(["mount", "-o", f"remount,{','.join(options)}", str(folder)], check=True)
        yield folder
    finally:  # lazy: a failed torch.save may still hold a file open in this process
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


@pytest.fixture
def read_only_mount(tmp_path) -> Iterator[Path]:
    with tmpfs(tmp_path / "ro", "ro") as folder:
        yield folder


@pytest.fixture
def full_mount(tmp_path) -> Iterator[Path]:
    with tmpfs(tmp_path / "full") as folder:
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # every block taken
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield folder


@pytest.mark.parametrize("tool", TOOLS)
def test_read_only_file_system(tool, tools, read_only_mount, capsys):
    assert run_tool(tool, tools[tool](read_only_mount / "out")) == 2
    one_line_naming(capsys.readouterr().err, read_only_mount, "EROFS")
    assert all_files(read_only_mount) == []


@pytest.mark.parametrize("tool", [t for t in TOOLS if t != "fetch_assets"])
def test_real_full_disk(tool, tools, full_mount, capsys):
    assert run_tool(tool, tools[tool](full_mount / "out")) == 2
    one_line_naming(capsys.readouterr().err, full_mount, "ENOSPC")
    assert set(all_files(full_mount)) <= {"filler", "out"}  # at most the (empty) output folder


@pytest.mark.parametrize("tool", ["evaluate", "generate"])
def test_results_to_a_full_stdout(tool, tools, tmp_path, zh_vocab_file, small_corpus):
    """/dev/full: every write fails with ENOSPC, as a redirect onto a full disk does."""
    hf = make_tiny_hf(tmp_path / "hf", zh_vocab_file)
    argv = {
        "evaluate": ["--input", str(small_corpus), "--seq-length", "16", "--max-tokens", "64"],
        "generate": ["--prompt", "今天", "--max-new-tokens", "2", "--json"],
    }[tool]
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, f"tools/{tool}.py", "--hf", str(hf), "--device", "cpu", *argv],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=300,
        )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error") or "Traceback" in line]
    assert result.returncode == 2 and errors == [
        "error: cannot write the output: No space left on device (ENOSPC); the disk is full; "
        "free some space or write the output elsewhere"
    ], result.stderr
    assert "Exception ignored" not in result.stderr
