"""What a training run is told: the `"pretrain"` block of a ds_configs/*.json file, as a dataclass.

A ds_configs file is a DeepSpeed config with one extra top-level key, `"pretrain"`, that holds
everything DeepSpeed does not know about (data, vocab, model preset, sequence length, steps,
checkpoint directories and intervals). `load_config_file` splits the two; `TrainConfig` is the
pretrain block, validated field by field on construction. Relative paths are taken relative to
the working directory, as Megatron's flags are.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_zh.errors import ConfigError

PRETRAIN_KEY = "pretrain"


@dataclass(frozen=True)
class TrainConfig:
    """The pretrain block. Field names are the Megatron flags' names with `_` for `-`."""

    # Data.
    data_path: tuple[str, ...]  # ("prefix",) or Megatron-style ("0.7", "a_text_document", "0.3", "b_text_document")
    vocab_file: str
    train_iters: int
    seq_length: int = 1024
    split: str = "949,50,1"
    data_cache_path: str | None = None  # where dataset index files go (default: beside each dataset)
    num_workers: int = 2
    eod_mask_loss: bool = False
    # Model.
    model: str = "gpt2-distil"  # a GPT2Config preset
    model_overrides: dict[str, Any] = field(default_factory=dict)  # GPT2Config fields to change
    # Schedule. Warm-up is linear over lr_warmup_iters, or lr_warmup_fraction of train_iters.
    lr_warmup_fraction: float = 0.1
    lr_warmup_iters: int | None = None
    seed: int = 1234
    # Checkpoints.
    save: str | None = None
    load: str | None = None
    save_interval: int | None = None
    keep_last: int | None = None  # keep the newest K checkpoints in `save` (None: keep all)
    finetune: bool = False  # take only the weights from `load`: fresh optimizer, schedule, counters
    exit_interval: int | None = None  # save and exit once the iteration is a multiple of this
    # Evaluation and logging.
    eval_interval: int | None = None
    eval_iters: int = 10
    log_interval: int = 10
    tensorboard_dir: str | None = None  # default: <save>/tensorboard
    peak_tflops: float | None = None  # per-device peak for MFU; default from the device table
    max_nonfinite_steps: int = 3  # stop when more non-finite losses than this come in a row

    def __post_init__(self) -> None:
        problems: list[str] = []

        def positive_int(name: str, value: Any, optional: bool = False) -> None:
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer{' or null' if optional else ''}, got {value!r}")

        for name in ("train_iters", "seq_length", "eval_iters", "log_interval"):
            positive_int(name, getattr(self, name))
        for name in ("save_interval", "keep_last", "exit_interval", "eval_interval", "lr_warmup_iters"):
            positive_int(name, getattr(self, name), optional=True)
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            problems.append(f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        if isinstance(self.max_nonfinite_steps, bool) or not isinstance(self.max_nonfinite_steps, int) \
                or self.max_nonfinite_steps < 0:
            problems.append(f"max_nonfinite_steps must be an integer >= 0, got {self.max_nonfinite_steps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            problems.append(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if not isinstance(self.lr_warmup_fraction, (int, float)) or not 0.0 <= self.lr_warmup_fraction < 1.0:
            problems.append(f"lr_warmup_fraction must be in [0, 1), got {self.lr_warmup_fraction!r}")
        if self.peak_tflops is not None and not (isinstance(self.peak_tflops, (int, float))
                                                  and math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            problems.append(f"peak_tflops must be a positive number or null, got {self.peak_tflops!r}")
        if not self.data_path or not all(isinstance(p, str) and p for p in self.data_path):
            problems.append(f"data_path must be a non-empty list of dataset prefixes, got {list(self.data_path)!r}")
        if not isinstance(self.vocab_file, str) or not self.vocab_file:
            problems.append(f"vocab_file must be a path, got {self.vocab_file!r}")
        if not isinstance(self.model_overrides, dict):
            problems.append(f"model_overrides must be an object of GPT2Config fields, got {self.model_overrides!r}")
        for name in ("finetune", "eod_mask_loss"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.save_interval is not None and self.save is None:
            problems.append("save_interval is set but there is no save directory (pretrain.save or --save)")
        if self.keep_last is not None and self.save is None:
            problems.append("keep_last is set but there is no save directory (pretrain.save or --save)")
        if self.finetune and self.load is None:
            problems.append("finetune needs the checkpoint to start from: set pretrain.load or --load")
        if problems:
            raise ConfigError("invalid pretrain config: " + "; ".join(problems))

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
        return None if self.save is None else os.path.join(self.save, "tensorboard")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data_path"] = list(self.data_path)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "pretrain block") -> TrainConfig:
        """Build from the JSON block; unknown keys are errors that suggest the key meant."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
                raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in d]
        if missing:
            flags = ", ".join("--" + name.replace("_", "-") for name in missing)
            raise ConfigError(f"{source}: missing {', '.join(missing)} (set it there or pass {flags})")
        values = dict(d)
        if isinstance(values.get("data_path"), str):
            values["data_path"] = values["data_path"].split()
        if isinstance(values.get("data_path"), list):
            values["data_path"] = tuple(str(p) for p in values["data_path"])
        return cls(**values)


def load_config_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a ds_configs JSON file -> (DeepSpeed config without the pretrain block, pretrain block)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (pass --ds_config ds_configs/stage1.json or similar)")
    text = path.read_text(encoding="utf-8")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    pretrain = config.pop(PRETRAIN_KEY, None)
    if not isinstance(pretrain, dict):
        raise ConfigError(f"{path}: no \"{PRETRAIN_KEY}\" object (data, vocab, model, seq_length, train_iters ...); "
                          "see ds_configs/cpu_tiny.json for an example")
    return config, pretrain


@dataclass(frozen=True)
class RunConfig:
    """Everything a run uses, resolved and consistent: the pretrain block, the model, the DeepSpeed dict."""

    train: TrainConfig
    model: Any  # megatron_zh.model.GPT2Config
    deepspeed: dict[str, Any]  # complete: batch sizes, lr, schedule and precision filled in
    world_size: int
    config_file: str

    @property
    def micro_batch_size(self) -> int:
        return self.deepspeed["train_micro_batch_size_per_gpu"]

    @property
    def global_batch_size(self) -> int:
        return self.deepspeed["train_batch_size"]

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.deepspeed["gradient_accumulation_steps"]

    @property
    def precision(self) -> str:
        if self.deepspeed.get("bf16", {}).get("enabled"):
            return "bf16"
        if self.deepspeed.get("fp16", {}).get("enabled"):
            return "fp16"
        return "fp32"

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.train.seq_length

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration, as printed at start-up and saved beside the checkpoints."""
        return {
            "config_file": self.config_file,
            "world_size": self.world_size,
            "precision": self.precision,
            PRETRAIN_KEY: self.train.to_dict(),
            "model_config": self.model.to_dict(),
            "deepspeed": self.deepspeed,
        }
