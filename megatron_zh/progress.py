"""Progress of a long job with a known total: a tqdm bar on a terminal, log lines otherwise.

`Progress` counts the work done and knows its rate and ETA; what a log line says, and how often
one is written, stays with the job (preprocessing logs every N documents, evaluation every N
seconds). `format_duration` spells a number of seconds as H:MM:SS for those lines.
"""

from __future__ import annotations

import math
import sys
import time
from types import TracebackType
from typing import Any

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    """H:MM:SS (hours unbounded); "?" when unknown (infinite or NaN); below zero counts as 0."""
    if not math.isfinite(seconds):
        return "?"
    whole = int(max(seconds, 0))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """`done` out of `total` units since construction: a tqdm bar when stderr is a terminal.

    When stderr is not a terminal there is no bar and `writes_lines` is True: the job then logs
    its own lines, using `rate`, `eta_s` and `due` (a clock for time-based lines). With
    `enabled=False` there is neither bar nor lines. `bar_options` go to tqdm as they are.
    """

    def __init__(self, total: int, *, desc: str, unit: str, enabled: bool = True, **bar_options: Any) -> None:
        self.total = total
        self.done = 0
        self.start = self._last_line = time.perf_counter()
        self.bar: tqdm[Any] | None = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **bar_options)
        self.writes_lines = enabled and self.bar is None

    @property
    def elapsed_s(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    @property
    def rate(self) -> float:
        """Units per second so far."""
        return self.done / self.elapsed_s

    @property
    def eta_s(self) -> float:
        """Seconds left at the rate so far; infinite while nothing is done."""
        rate = self.rate
        return (self.total - self.done) / rate if rate else math.inf

    def update(self, amount: int, postfix: str | None = None) -> None:
        """Count `amount` more units done; `postfix` (e.g. other rates) is shown after the bar."""
        self.done += amount
        if self.bar is not None:
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(amount)

    def due(self, interval_s: float) -> bool:
        """True, at most once per `interval_s`, when a log line should be written (never with a bar)."""
        now = time.perf_counter()
        if not self.writes_lines or now - self._last_line < interval_s:
            return False
        self._last_line = now
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
