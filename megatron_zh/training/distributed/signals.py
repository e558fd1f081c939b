"""Pre-emption: SIGTERM/SIGINT ask the run to save a checkpoint and exit after the current step.

The handler only records the signal; the train loop checks it once per step, and the ranks agree
on it through a per-step all-reduce from host memory, one step late (process_group.AnyRankFlag: a rank may
be signalled a moment before the others, and all must take part in the checkpoint's collectives).

Repeats: a second SIGINT (Ctrl-C pressed again) means "now" and raises KeyboardInterrupt. Repeated
SIGTERMs are ignored: the deepspeed launcher forwards the SIGTERM it receives to ranks that may
have received it already (a whole process group signalled), and the scheduler's SIGKILL after its
grace period is the hard stop anyway.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal

from megatron_zh.log import get_logger

logger = get_logger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT)
StopSignal = Literal["SIGTERM", "SIGINT"]
# What signal.signal takes and returns: a function, SIG_DFL / SIG_IGN (ints), or None.
Handler = Callable[[int, FrameType | None], Any] | int | None


class StopRequest:
    """Context manager that turns SIGTERM/SIGINT into a flag while training runs."""

    def __init__(self) -> None:
        self.signal_name: StopSignal | None = None
        self._previous: dict[int, Handler] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name: StopSignal = "SIGINT" if signum == signal.SIGINT else "SIGTERM"  # the HANDLED ones
        if self.signal_name is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signal_name = name
        logger.warning(
            "received %s: saving a checkpoint after this step, then exiting%s",
            name,
            " (Ctrl-C again to stop now, without saving)" if signum == signal.SIGINT else "",
        )

    def __enter__(self) -> StopRequest:
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
