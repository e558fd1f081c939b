"""The one wrapper every command-line tool runs its `main` through."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from megatron_zh.errors import MegatronZhError
from megatron_zh.log import setup_logging


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run `main(argv)`; a MegatronZhError becomes `error: ...` on stderr and exit status 2, not a traceback."""
    setup_logging()
    try:
        code = main(argv)
    except MegatronZhError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
