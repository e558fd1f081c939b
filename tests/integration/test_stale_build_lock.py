"""A CPU run that meets the lock a killed build of DeepSpeed's comm op left: one line in seconds, not a hang.

Before, `python pretrain_gpt.py` on CPU waited forever inside deepspeed.init_distributed (torch's FileBaton
polls the lock with no timeout). The check itself: tests/training/test_extension_lock.py.
"""

from __future__ import annotations

import subprocess
import sys
import time

from training_runs import REPO_ROOT, environment, pretrain_args


def test_pretrain_refuses_a_stale_build_lock_in_one_line(tmp_path, zh_text_document):
    extensions = tmp_path / "torch_extensions"
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()  # what SIGTERM or SIGKILL during the op's JIT build leaves
    env = {**environment(), "TORCH_EXTENSIONS_DIR": str(extensions)}
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, *pretrain_args(zh_text_document, tmp_path / "run", train_iters=20)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a regression hangs: fail instead of holding the suite forever
    )
    seconds = time.monotonic() - began
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stale lock from a killed build of DeepSpeed's shared-memory comm op")
    assert last.endswith(f"on which torch would wait forever: rm {lock}"), last
    assert lock.exists(), "the lock is the user's to remove"
    print(f"refused after {seconds:.1f} s (start-up and preflight included)")
