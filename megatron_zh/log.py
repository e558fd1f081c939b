"""Logging set-up shared by the tools and the trainer: one format, the rank in every line."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s [%(levelname)s] [rank %(rank)s] %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = os.environ.get("RANK", "0")
        return True


class _OurHandler(logging.StreamHandler):
    """Ours, so that a second setup_logging finds it and adds no duplicate. It writes to whatever sys.stderr
    is when a record is logged, not the one it was made with: a tool run in-process after another (tests, a
    notebook) or with stderr redirected (contextlib.redirect_stderr) logs where stderr goes now, never into a
    stream closed since."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # StreamHandler.__init__ and setStream assign it; the current sys.stderr always wins


def get_logger(name: str) -> logging.Logger:
    """A logger under the `megatron_zh` hierarchy; configure output once with `setup_logging`."""
    return logging.getLogger(name if name.startswith("megatron_zh") else f"megatron_zh.{name}")


def setup_logging(level: int | str = logging.INFO) -> None:
    """Send megatron_zh logs to stderr with the rank prefix. Idempotent."""
    root = logging.getLogger("megatron_zh")
    root.setLevel(level)
    if not any(isinstance(h, _OurHandler) for h in root.handlers):
        handler = _OurHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        handler.addFilter(_RankFilter())
        root.addHandler(handler)
    root.propagate = False
