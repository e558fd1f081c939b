"""The client state: what a checkpoint stores beside DeepSpeed's own state, as one typed record.

It sits at the top level of global_step<N>/mp_rank_00_model_states.pt (DeepSpeed's
`client_state`) and, without "rng_states", in global_step<N>/client_state.json, which can be read
without torch. `to_dict` writes, and `from_dict` reads, exactly these keys, in this order:

    checkpoint_format   CHECKPOINT_FORMAT ("megatron_zh/1")
    iteration           optimizer steps done (== DeepSpeed's global_steps for runs we started)
    consumed_samples    training samples consumed over all ranks; the sampler resumes here
    model_config        GPT2Config.to_dict() of the saved model
    vocab_fingerprint   "sha256:..." of the vocab the model was trained with
    vocab_size          number of tokens in that vocab
    normalization       the text normalisation of its training data ("none", or text/normalization.py's
                        identity); absent in checkpoints written before it was recorded: "none"
    train_config        TrainConfig.to_dict() of the run (null in a checkpoint made by a converter)
    world_size          data-parallel ranks that wrote the checkpoint
    precision           "fp32" | "bf16" | "fp16"
    source              only in a converted checkpoint: what it was converted from
    weights_only        only in a converted checkpoint: true (no optimizer or schedule state)
    rng_states          only in the model-states file: list indexed by global rank of
                        {"python", "numpy", "torch", "cuda"} RNG states (dropout masks continue
                        exactly on resume); [] in a converted checkpoint
    unlogged_losses     only when saved between two logged steps (a signal, --exit-interval): the
                        loss of each step since the last logged one (null: non-finite), so that the
                        resumed run's first logged loss averages the steps an uninterrupted run's would
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from megatron_zh.checkpoint.layout import CLIENT_STATE_FILE, LATEST_FILE, MODEL_STATES_FILE
from megatron_zh.checkpoint.safety import safe_load
from megatron_zh.errors import CheckpointError
from megatron_zh.fileio import read_json_object
from megatron_zh.model.config import Precision
from megatron_zh.validators import (
    BOOLEAN,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Check,
    checked,
    field_problems,
    one_of,
    optional,
)

CHECKPOINT_FORMAT = "megatron_zh/1"
# Written only when set.
OPTIONAL_KEYS = frozenset({"normalization", "source", "weights_only", "rng_states", "unlogged_losses"})

OBJECT = Check(lambda v: isinstance(v, dict), "an object")
LIST = Check(lambda v: isinstance(v, list), "a list")
LOSSES = Check(
    lambda v: (
        isinstance(v, list) and all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in v)
    ),
    "a list of numbers or nulls",
)


@dataclass(frozen=True, kw_only=True)
class ClientState:
    """One checkpoint's client state (module docstring). Field order is the on-disk key order."""

    checkpoint_format: str = checked(NON_EMPTY_STRING, CHECKPOINT_FORMAT)
    iteration: int = checked(NON_NEGATIVE_INT)
    consumed_samples: int = checked(NON_NEGATIVE_INT)
    model_config: dict[str, Any] = checked(OBJECT)
    vocab_fingerprint: str = checked(NON_EMPTY_STRING)
    vocab_size: int = checked(POSITIVE_INT)
    normalization: str | None = checked(optional(NON_EMPTY_STRING), None)
    train_config: dict[str, Any] | None = checked(optional(OBJECT))
    world_size: int = checked(POSITIVE_INT)
    precision: Precision = checked(one_of(get_args(Precision)))
    source: str | None = checked(optional(NON_EMPTY_STRING), None)
    weights_only: bool | None = checked(optional(BOOLEAN), None)
    rng_states: list[dict[str, Any]] | None = checked(optional(LIST), None)
    unlogged_losses: list[float | None] | None = checked(optional(LOSSES), None)

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if problems:
            raise CheckpointError("invalid client state: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The keys as stored; the optional ones (OPTIONAL_KEYS) only when set."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {k: v for k, v in values.items() if v is not None or k not in OPTIONAL_KEYS}

    def without_rng_states(self) -> ClientState:
        """What client_state.json holds."""
        return dataclasses.replace(self, rng_states=None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ClientState:
        """The client state in `data` (other keys, such as DeepSpeed's, are ignored); CheckpointError
        naming `where` when a key is missing or holds the wrong type."""
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data and name not in OPTIONAL_KEYS]
        if missing:
            raise CheckpointError(
                f"{where}: the client state has no {', '.join(missing)}; the checkpoint was not written by "
                f"pretrain_gpt.py (format {CHECKPOINT_FORMAT}) or is damaged"
            )
        try:
            return cls(**{name: data[name] for name in names if name in data})
        except CheckpointError as exc:
            raise CheckpointError(f"{where}: {exc}; the checkpoint is damaged") from None


def read_client_state(directory: str | os.PathLike[str], tag: str) -> ClientState:
    """A checkpoint's client state without RNG states: client_state.json, else from the model-states file."""
    folder = Path(directory) / tag
    if not (folder / MODEL_STATES_FILE).is_file():
        raise CheckpointError(
            f"{folder / MODEL_STATES_FILE} not found: {Path(directory) / LATEST_FILE} names "
            f"{tag!r} but that checkpoint is missing or incomplete"
        )
    sidecar = folder / CLIENT_STATE_FILE
    if sidecar.is_file():
        data = read_json_object(sidecar, CheckpointError, fix="the checkpoint is damaged")
        return ClientState.from_dict(data, str(sidecar)).without_rng_states()
    # A checkpoint written by another tool: read the client state from DeepSpeed's file (heavier).
    states = safe_load(folder / MODEL_STATES_FILE)
    return ClientState.from_dict(states, str(folder / MODEL_STATES_FILE)).without_rng_states()
