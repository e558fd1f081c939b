"""The preprocessing pool: no more workers than chunks or CPUs, no orphans after `kill -9` of the main
process, and the temporaries such a kill leaves are removed by the next run into the same prefix."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from repo_paths import REPO_ROOT as REPO

from megatron_zh.data.preprocess import pipeline as preprocess_module
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.pipeline import preprocess
from megatron_zh.data.preprocess.workers import available_cpus
from megatron_zh.fileio import temporary_sibling

# Preprocessing whose encoder sleeps per chunk, so the test can kill it mid-run.
SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    from megatron_zh.data.preprocess import encode as preprocess_encode, pipeline
    from megatron_zh.data.preprocess.config import PreprocessConfig

    encode = preprocess_encode.ChunkEncoder.__call__
    def slow(self, chunk):
        time.sleep(0.2)
        return encode(self, chunk)
    preprocess_encode.ChunkEncoder.__call__ = slow
    corpus, prefix, vocab = sys.argv[1:]
    pipeline.preprocess(PreprocessConfig(inputs=[corpus], output_prefix=prefix, vocab_file=vocab, workers=2,
                                           chunk_bytes=4096, progress=False))
    """
)


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait a moment to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def wait_for(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_workers_are_capped_at_chunks_and_cpus(tmp_path, zh_vocab_file, caplog, monkeypatch):
    pools = []
    real_pool = concurrent.futures.ProcessPoolExecutor

    def recording_pool(workers, **kwargs):
        pools.append(workers)
        return real_pool(workers, **kwargs)

    monkeypatch.setattr(preprocess_module.concurrent.futures, "ProcessPoolExecutor", recording_pool)
    corpus = tmp_path / "one_chunk.txt"
    corpus.write_text("今天天气很好。\n我们去公园散步吧。\n", encoding="utf-8")
    base = dict(inputs=[str(corpus)], vocab_file=str(zh_vocab_file), workers=1000, progress=False)
    with caplog.at_level(logging.INFO):
        stats = preprocess(PreprocessConfig(output_prefix=str(tmp_path / "one"), **base))
    assert stats.documents == {"text": 2} and pools == []  # one chunk: encoded in-process, no pool at all
    assert f"--workers 1000 capped at 1 ({available_cpus()} CPU(s) available, 1 chunk(s) of input)" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO):
        preprocess(PreprocessConfig(output_prefix=str(tmp_path / "many"), chunk_bytes=8, **base))
    cap = min(available_cpus(), 2)
    assert pools == ([cap] if cap > 1 else []) and f"capped at {cap}" in caplog.text


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux") or available_cpus() < 2, reason="needs /proc and 2 CPUs")
def test_killed_run_leaves_no_workers_and_its_temporaries_go_with_the_next_run(
    tmp_path, zh_vocab_file, zh_corpus_file, caplog
):
    prefix = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, str(zh_corpus_file), str(prefix), str(zh_vocab_file)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert wait_for(lambda: len(children(process.pid)) >= 2 or process.poll() is not None), "no workers started"
        workers = children(process.pid)
        temporaries = sorted(tmp_path.glob(".out_text_document.*.tmp"))
        assert len(workers) == 2 and len(temporaries) == 3  # .bin and the two index spill files
    finally:
        process.kill()
        process.wait()
    # The workers die with their parent (PR_SET_PDEATHSIG) instead of waiting for work forever.
    assert wait_for(lambda: not any(map(running, workers)), timeout_s=10), [p for p in workers if running(p)]
    assert all(path.exists() for path in temporaries)  # SIGKILL: nothing could clean up

    # Temporaries of a live process, or of another machine on a shared disk, are not touched.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())
        live = tmp_path / f".out_text_document.bin.{host}-{sleeper.pid}.abc.tmp"
        other_host = tmp_path / ".out_text_document.bin.elsewhere-1.abc.tmp"
        for path in (live, other_host):
            path.write_bytes(b"")
        with caplog.at_level(logging.INFO):
            preprocess(
                PreprocessConfig(
                    inputs=[str(zh_corpus_file)],
                    output_prefix=str(prefix),
                    vocab_file=str(zh_vocab_file),
                    progress=False,
                )
            )
        assert not any(path.exists() for path in temporaries)
        assert live.exists() and other_host.exists()
        removed = [r.getMessage() for r in caplog.records if "left by a killed run" in r.getMessage()]
        assert len(removed) == 3 and all(str(tmp_path) in line for line in removed), caplog.text
    finally:
        sleeper.kill()
        sleeper.wait()


def test_temporary_names_carry_host_and_pid(tmp_path):
    tmp = temporary_sibling(tmp_path / "x.bin")
    host, pid = tmp.name.split(".")[3].rsplit("-", 1)
    assert int(pid) == os.getpid() and host and tmp.name.startswith(".x.bin.") and tmp.name.endswith(".tmp")


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs fork and /proc")
def test_the_watchdog_ends_a_worker_whose_parent_died_where_prctl_is_missing():
    script = textwrap.dedent(
        """
        import os, time
        from megatron_zh.data.preprocess import workers
        workers._set_parent_death_signal = lambda: False  # as on a system without prctl
        pid = os.fork()
        if pid == 0:
            workers.die_with_parent(os.getppid())
            time.sleep(60)
            os._exit(0)
        print(pid, flush=True)
        time.sleep(0.5)
        os._exit(0)  # the parent goes; the child is re-parented
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    child = int(result.stdout.split()[0])
    try:
        assert wait_for(lambda: not running(child), timeout_s=10)
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)
