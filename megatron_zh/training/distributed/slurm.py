"""The rendezvous address of an `srun` job, from SLURM's compressed node list.

Under srun every task knows its place (SLURM_PROCID/NTASKS/LOCALID) but not where rank 0 listens.
Batch scripts usually export MASTER_ADDR from `scontrol show hostnames` (launch/slurm.sbatch does);
when they do not (an `salloc` shell, a script from elsewhere) the first node of the step is the
answer: srun places task 0 there under every distribution, and scontrol is not needed to find it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from megatron_zh.errors import ConfigError

# The step's nodes first: a step may run on part of the job's allocation.
NODELIST_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
_BRACKET = re.compile(r"\[([^\]]*)\]")


def _top_level_entries(nodelist: str) -> list[str]:
    """Split on the commas outside brackets: "a[1-2,5],b" -> ["a[1-2,5]", "b"]."""
    entries, depth, start = [], 0, 0
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            entries.append(nodelist[start:i])
            start = i + 1
    entries.append(nodelist[start:])
    return [entry.strip() for entry in entries if entry.strip()]


def first_host(nodelist: str) -> str:
    """The first hostname of a SLURM node list: "gpu[007-009,012],cpu1" -> "gpu007".

    Each bracket contributes the start of its first range, zero padding kept, as scontrol expands it.
    """
    entries = _top_level_entries(nodelist)
    if not entries or "[" in _BRACKET.sub("", entries[0]) or "]" in _BRACKET.sub("", entries[0]):
        raise ConfigError(f"cannot read the SLURM node list {nodelist!r}")
    return _BRACKET.sub(lambda match: match.group(1).split(",")[0].split("-")[0].strip(), entries[0])


def master_addr(environ: Mapping[str, str]) -> str | None:
    """The first node of the step (or job), or None when no node list is in the environment."""
    for name in NODELIST_VARIABLES:
        if environ.get(name):
            return first_host(environ[name])
    return None
