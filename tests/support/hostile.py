"""A hostile pickle: unpickling it with the full unpickler runs a shell command (it touches a marker file)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class Payload:
    """What a hostile checkpoint holds: unpickling it runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def poison(path: Path, marker: Path) -> None:
    """Add the payload to a real checkpoint file, keeping everything else."""
    states = torch.load(path, map_location="cpu", weights_only=False)
    states["payload"] = Payload(marker)
    torch.save(states, path)
