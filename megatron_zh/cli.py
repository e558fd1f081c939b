"""The one wrapper every command-line tool runs its `main` through."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from megatron_zh.errors import MegatronZhError
from megatron_zh.log import setup_logging
from megatron_zh.storage import describe_os_error


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run `main(argv)`; a MegatronZhError or a storage error (`describe_os_error`) becomes `error: ...` on
    stderr and exit status 2, not a traceback."""
    setup_logging()
    try:
        code = main(argv)
    except MegatronZhError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a read-only or full disk, a file where a folder is needed: one line naming it
        line = describe_os_error(exc)
        if line is None:
            raise
        if exc.filename is None:  # perhaps stdout itself: drop what it still buffers, or exit retries it
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
