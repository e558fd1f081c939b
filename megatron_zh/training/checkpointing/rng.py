"""Random states: every rank's saved with a checkpoint, and the one a rank continues on resume.

Random states are saved per global rank. On resume, rank r takes the state saved by rank r mod N:
shrinking, every remaining rank continues its own stream; growing, the new ranks repeat the stream
of an existing one. That is what a fresh run does anyway (every rank seeds the same generator; see
pretrain.seed_everything), and it keeps two resumes of one checkpoint on M ranks identical. Dropout
masks cannot match the uninterrupted run once samples move to other ranks; with dropout off
(--hidden-dropout 0 --attention-dropout 0) nothing in a step draws from them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from megatron_zh.training.distributed.process_group import DistEnv

RngState = dict[str, Any]  # {"python", "numpy", "torch", "cuda"}: one rank's random generators


def capture_rng_state() -> RngState:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: RngState) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states(env: DistEnv) -> list[RngState]:
    mine = capture_rng_state()
    if env.world_size == 1:
        return [mine]
    states: list[Any] = [None] * env.world_size
    torch.distributed.all_gather_object(states, mine)
    return states


def rng_state_for_rank(rng_states: list[Any] | None, rank: int) -> Any | None:
    """The saved random state rank `rank` continues: the one rank `rank mod N` saved (module docstring)."""
    if not rng_states:
        return None
    return rng_states[rank % len(rng_states)]
