"""What a training run is told: the `"pretrain"` block of a ds_configs/*.json file, as a dataclass.

A ds_configs file is a DeepSpeed config with one extra top-level key, `"pretrain"`, that holds
everything DeepSpeed does not know about (data, vocab, model preset, sequence length, steps,
checkpoint directories and intervals). `load_config_file` splits the two; `TrainConfig` is the
pretrain block, validated field by field on construction. Relative paths are taken relative to
the working directory, as Megatron's flags are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from megatron_zh.checkpoint.layout import TENSORBOARD_DIR
from megatron_zh.checkpoint.safety import TRUST_FLAG_HELP
from megatron_zh.data.datasets.config import DATA, DatasetConfig
from megatron_zh.errors import ConfigError
from megatron_zh.fileio import read_json_object
from megatron_zh.knobs import from_flat, knob, nested, to_flat
from megatron_zh.model.config import ModelChoice
from megatron_zh.validators import (
    BOOLEAN,
    FRACTION,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    field_problems,
    one_of,
    optional,
    raise_problems,
)

PRETRAIN_KEY = "pretrain"

SCHEDULE, CHECKPOINTS, LOGGING = "training schedule", "checkpoints", "evaluation and logging"
SPEED = "kernels and compilation"
# The same names as megatron_zh.ops.Backend (this layer does not import torch before a run starts).
KernelsRequest = Literal["auto", "triton", "torch"]


@dataclass(frozen=True)
class TrainConfig:
    """The pretrain block. Each field is a knob: its JSON key, and the Megatron flag `--name-with-dashes`.

    The data and model knobs are the dataset's and the model's own configs, nested once (their keys
    and flags stay flat: `seq_length`, `--seq-length`)."""

    data: DatasetConfig = nested(DatasetConfig)
    vocab_file: str = knob(help="the WordPiece vocab the data was tokenized with", check=NON_EMPTY_STRING, group=DATA)
    train_iters: int = knob(help="optimizer steps of the run", check=POSITIVE_INT, group=SCHEDULE)
    model: ModelChoice = nested(ModelChoice)
    num_workers: int = knob(2, help="DataLoader worker processes per rank", check=NON_NEGATIVE_INT, group=DATA)
    # Schedule. Warm-up is linear over lr_warmup_iters, or lr_warmup_fraction of train_iters.
    lr_warmup_fraction: float = knob(
        0.1, help="warm-up length as a fraction of train_iters", check=FRACTION, group=SCHEDULE
    )
    lr_warmup_iters: int | None = knob(
        None, help="warm-up length in steps (overrides the fraction)", check=optional(POSITIVE_INT), group=SCHEDULE
    )
    # Checkpoints.
    save: str | None = knob(None, help="checkpoint directory", group=CHECKPOINTS)
    load: str | None = knob(None, help="checkpoint directory to resume from (its `latest`)", group=CHECKPOINTS)
    save_interval: int | None = knob(
        None,
        help="save every N steps (0: only at the end)",
        check=optional(POSITIVE_INT),
        zero_means_off=True,
        group=CHECKPOINTS,
    )
    keep_last: int | None = knob(
        None,
        help="keep the newest K checkpoints (0: keep all)",
        check=optional(POSITIVE_INT),
        zero_means_off=True,
        group=CHECKPOINTS,
    )
    ckpt_step: int | None = knob(
        None,
        help="start from global_step<N> of --load instead of the checkpoint `latest` names (Megatron's flag)",
        check=optional(NON_NEGATIVE_INT),
        group=CHECKPOINTS,
    )
    set_aside_newer_checkpoints: bool = knob(
        False,
        help="when --load holds complete checkpoints newer than the one to start from, rename them "
        "global_step<N>.set-aside-<time> (nothing is deleted) instead of refusing to start",
        check=BOOLEAN,
        group=CHECKPOINTS,
    )
    finetune: bool = knob(
        False,
        help="load only the weights from --load (fresh optimizer, schedule and sample counter)",
        check=BOOLEAN,
        group=CHECKPOINTS,
    )
    override_existing_save: bool = knob(
        False,
        help="start from scratch even though --save already holds a checkpoint (its checkpoints get replaced)",
        check=BOOLEAN,
        group=CHECKPOINTS,
    )
    trust_checkpoint: bool = knob(False, help=TRUST_FLAG_HELP, check=BOOLEAN, group=CHECKPOINTS)
    exit_interval: int | None = knob(
        None,
        help="save and exit once the iteration is a multiple of this",
        check=optional(POSITIVE_INT),
        zero_means_off=True,
        group=CHECKPOINTS,
    )
    # Evaluation and logging.
    eval_interval: int | None = knob(
        None,
        help="evaluate every N steps (0: only at the end)",
        check=optional(POSITIVE_INT),
        zero_means_off=True,
        group=LOGGING,
    )
    eval_iters: int = knob(
        10, help="validation batches (of the global batch size) per evaluation", check=POSITIVE_INT, group=LOGGING
    )
    log_interval: int = knob(10, help="log every N steps", check=POSITIVE_INT, group=LOGGING)
    tensorboard_dir: str | None = knob(None, help="TensorBoard directory (default: <save>/tensorboard)", group=LOGGING)
    peak_tflops: float | None = knob(
        None,
        help="per-device peak TFLOP/s for MFU (default: device table)",
        check=optional(POSITIVE_NUMBER),
        group=LOGGING,
    )
    max_nonfinite_steps: int = knob(
        3, help="stop when more than this many non-finite losses come in a row", check=NON_NEGATIVE_INT, group=LOGGING
    )
    # Kernels and compilation.
    kernels: KernelsRequest = knob(
        "auto",
        help="fused ops: auto = the Triton kernels where they can run (CUDA; CPU only under TRITON_INTERPRET=1), "
        "each after a self-check on the run's device, dtype and shapes, and PyTorch code for any that fails (one "
        "WARNING); triton = the same, but a failure stops the run; torch = PyTorch code, nothing checked",
        check=one_of(get_args(KernelsRequest)),
        group=SPEED,
    )
    compile: bool = knob(
        False,
        help="compile the model with torch.compile (inductor) inside the DeepSpeed engine",
        check=BOOLEAN,
        group=SPEED,
    )
    # Distributed. Megatron's flag and default; a float so that tests (and impatient users) can go below a minute.
    distributed_timeout_minutes: float = knob(
        10.0,
        help="how long a collective (or the rendezvous) may wait for a missing rank before this rank fails",
        check=POSITIVE_NUMBER,
        group="distributed",
    )

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if self.save_interval is not None and self.save is None:
            problems.append("save_interval is set but there is no save directory (pretrain.save or --save)")
        if self.keep_last is not None and self.save is None:
            problems.append("keep_last is set but there is no save directory (pretrain.save or --save)")
        if self.ckpt_step is not None and self.load is None:
            problems.append("ckpt_step names a checkpoint of --load, but there is no --load (pretrain.load)")
        if self.finetune and self.load is None:
            problems.append("finetune needs the checkpoint to start from: set pretrain.load or --load")
        raise_problems("pretrain config", problems)

    @property
    def lr_warmup_steps(self) -> int:
        """Warm-up length in optimizer steps (iterations)."""
        if self.lr_warmup_iters is not None:
            return self.lr_warmup_iters
        return int(round(self.lr_warmup_fraction * self.train_iters))

    @property
    def tensorboard_path(self) -> str | None:
        if self.tensorboard_dir is not None:
            return self.tensorboard_dir
        return None if self.save is None else os.path.join(self.save, TENSORBOARD_DIR)

    def to_dict(self) -> dict[str, Any]:
        """The pretrain block as stored (config.json, checkpoints): flat keys, as the file has them."""
        return to_flat(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "pretrain block") -> TrainConfig:
        """Build from the JSON block; unknown keys are errors that suggest the key meant."""
        if isinstance(d.get("data_path"), str):  # Megatron's spelling: "0.7 a_text_document 0.3 b_text_document"
            d = {**d, "data_path": d["data_path"].split()}
        return from_flat(cls, d, source)


def load_config_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a ds_configs JSON file -> (DeepSpeed config without the pretrain block, pretrain block)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (pass --ds_config ds_configs/stage1.json or similar)")
    config = read_json_object(path, ConfigError)
    pretrain = config.pop(PRETRAIN_KEY, None)
    if not isinstance(pretrain, dict):
        raise ConfigError(
            f'{path}: no "{PRETRAIN_KEY}" object (data, vocab, model, seq_length, train_iters ...); '
            "see ds_configs/cpu_tiny.json for an example"
        )
    return config, pretrain
