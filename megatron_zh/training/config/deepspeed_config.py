"""Make the DeepSpeed part of a ds_configs file complete and consistent with the pretrain block and flags.

DeepSpeed's own rules that bite, and what we do about them:
- `train_batch_size` must equal micro-batch x gradient accumulation x world size. Like Megatron,
  the global batch is the recipe's constant: given `train_batch_size` (or --global-batch-size),
  the accumulation is derived for the world size at hand; given neither, the global batch is
  derived from the micro-batch and accumulation. All three are written back.
- `WarmupDecayLR` warms up *logarithmically* unless `"warmup_type": "linear"`; ours default to
  linear (the recipe). Its step counts are derived from `train_iters` (warm-up: 10% by default)
  and its peak from the optimizer's lr, so one number is never written twice. DeepSpeed also
  silently lengthens warm-ups shorter than 2 steps to 2; we write the length it will use.
- DeepSpeed's `"AdamW"` builds a fused CUDA/CPU extension unless `"torch_adam": true`; ours use
  torch's AdamW (no build step, on any device) wrapped by ZeRO's partitioned optimizer, or, with
  `"bias_correction": false` (the UER configs), our UerAdamW (training/engine.py): no build either.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from megatron_zh.errors import ConfigError
from megatron_zh.knobs import flag_name, knob
from megatron_zh.model.config import PRECISIONS, Precision
from megatron_zh.training.config.train_config import TrainConfig
from megatron_zh.validators import (
    FRACTION,
    NON_NEGATIVE_NUMBER,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    optional,
    validate_fields,
)

# DeepSpeed clamps warm-ups to at least this many steps (WarmupLR.__init__).
DEEPSPEED_MIN_WARMUP_STEPS = 2
SCHEDULERS_WITH_DERIVED_STEPS = ("WarmupDecayLR", "WarmupLR")

SCHEDULE = "training schedule"
ADAM_BETA = optional(FRACTION)


@dataclass(frozen=True)
class DeepSpeedOverrides:
    """Flags that rewrite the DeepSpeed half of the config file (None: keep the file's value)."""

    micro_batch_size: int | None = knob(
        None, help="per rank (DeepSpeed train_micro_batch_size_per_gpu)", check=optional(POSITIVE_INT), group=SCHEDULE
    )
    global_batch_size: int | None = knob(
        None,
        help="samples per step over all ranks (DeepSpeed train_batch_size); "
        "gradient accumulation = global / (micro x ranks)",
        check=optional(POSITIVE_INT),
        group=SCHEDULE,
    )
    lr: float | None = knob(
        None, help="peak learning rate (optimizer.params.lr)", check=optional(POSITIVE_NUMBER), group=SCHEDULE
    )
    min_lr: float | None = knob(
        None,
        help="WarmupDecayLR's warmup_min_lr: where warm-up starts and decay ends (default 0)",
        check=optional(NON_NEGATIVE_NUMBER),
        group=SCHEDULE,
    )
    clip_grad: float | None = knob(
        None,
        help="gradient clipping norm (DeepSpeed gradient_clipping; 0: off)",
        check=optional(NON_NEGATIVE_NUMBER),
        group=SCHEDULE,
    )
    weight_decay: float | None = knob(
        None,
        help="AdamW weight decay (optimizer.params.weight_decay)",
        check=optional(NON_NEGATIVE_NUMBER),
        group=SCHEDULE,
    )
    adam_beta1: float | None = knob(
        None, help="AdamW beta1 (optimizer.params.betas[0])", check=ADAM_BETA, group=SCHEDULE
    )
    adam_beta2: float | None = knob(
        None, help="AdamW beta2 (optimizer.params.betas[1])", check=ADAM_BETA, group=SCHEDULE
    )
    adam_eps: float | None = knob(
        None, help="AdamW epsilon (optimizer.params.eps)", check=optional(POSITIVE_NUMBER), group=SCHEDULE
    )
    precision: Precision | None = knob(
        None, help="train in {choice} (rewrites the DeepSpeed bf16/fp16 sections)", switches=True, group=SCHEDULE
    )

    def __post_init__(self) -> None:
        validate_fields(self, "command-line flags", label=flag_name)


def _resolve_batch(ds: dict, flags: DeepSpeedOverrides, world_size: int, source: str) -> None:
    micro = flags.micro_batch_size if flags.micro_batch_size is not None else ds.get("train_micro_batch_size_per_gpu")
    if micro is None:
        raise ConfigError(f"{source}: train_micro_batch_size_per_gpu is missing (or pass --micro-batch-size)")
    micro = POSITIVE_INT("the micro-batch size (train_micro_batch_size_per_gpu / --micro-batch-size)", micro)
    global_batch = flags.global_batch_size if flags.global_batch_size is not None else ds.get("train_batch_size")
    file_accumulation = ds.get("gradient_accumulation_steps")
    if global_batch is None:
        accumulation = POSITIVE_INT(
            f"{source}: gradient_accumulation_steps", 1 if file_accumulation is None else file_accumulation
        )
        global_batch = micro * accumulation * world_size
    else:
        global_batch = POSITIVE_INT("the global batch size (train_batch_size / --global-batch-size)", global_batch)
        per_pass = micro * world_size
        if global_batch % per_pass:
            raise ConfigError(
                f"global batch size {global_batch} is not divisible by micro-batch {micro} x {world_size} "
                f"data-parallel rank(s) = {per_pass}; change --global-batch-size / train_batch_size, "
                "--micro-batch-size or the number of GPUs"
            )
        accumulation = global_batch // per_pass
        flags_set_batch = flags.micro_batch_size is not None or flags.global_batch_size is not None
        if file_accumulation is not None and file_accumulation != accumulation and not flags_set_batch:
            raise ConfigError(
                f"{source}: train_batch_size {global_batch} != train_micro_batch_size_per_gpu {micro} x "
                f"gradient_accumulation_steps {file_accumulation} x world size {world_size}; drop "
                "gradient_accumulation_steps (it is derived) or make the three agree"
            )
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = accumulation
    ds["train_batch_size"] = global_batch


def _resolve_precision(ds: dict, flags: DeepSpeedOverrides, source: str) -> None:
    bf16 = bool(ds.get("bf16", {}).get("enabled", False))
    fp16 = bool(ds.get("fp16", {}).get("enabled", False))
    if bf16 and fp16:
        raise ConfigError(f"{source}: bf16 and fp16 are both enabled; enable one (or neither for fp32)")
    precision = flags.precision or ("bf16" if bf16 else "fp16" if fp16 else "fp32")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    ds.setdefault("bf16", {})["enabled"] = precision == "bf16"
    ds.setdefault("fp16", {})["enabled"] = precision == "fp16"


def _resolve_optimizer(ds: dict, flags: DeepSpeedOverrides, source: str) -> float:
    optimizer = ds.get("optimizer")
    if not isinstance(optimizer, dict) or "type" not in optimizer:
        raise ConfigError(
            f'{source}: an "optimizer" section with a "type" is required '
            '(e.g. {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": true}})'
        )
    params = optimizer.setdefault("params", {})
    if flags.lr is not None:
        params["lr"] = flags.lr
    if flags.weight_decay is not None:
        params["weight_decay"] = flags.weight_decay
    if flags.adam_beta1 is not None or flags.adam_beta2 is not None:
        betas = list(params.get("betas", (0.9, 0.999)))  # torch's AdamW defaults when the file has none
        if flags.adam_beta1 is not None:
            betas[0] = flags.adam_beta1
        if flags.adam_beta2 is not None:
            betas[1] = flags.adam_beta2
        if not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"Adam betas must be in [0, 1), got {betas} (--adam-beta1 / --adam-beta2)")
        params["betas"] = betas
    if flags.adam_eps is not None:
        params["eps"] = flags.adam_eps
    lr = params.get("lr")
    if not POSITIVE_NUMBER.accepts(lr):
        raise ConfigError(f"{source}: optimizer.params.lr must be a positive number (or pass --lr), got {lr!r}")
    if flags.clip_grad is not None:
        ds["gradient_clipping"] = flags.clip_grad
    return float(lr)


def _resolve_scheduler(ds: dict, train: TrainConfig, lr: float, flags: DeepSpeedOverrides, source: str) -> None:
    scheduler = ds.get("scheduler")
    if scheduler is None:
        return
    kind = scheduler.get("type")
    if kind not in SCHEDULERS_WITH_DERIVED_STEPS:
        return  # another DeepSpeed scheduler: passed through as written
    params = scheduler.setdefault("params", {})
    warmup = max(train.lr_warmup_steps, DEEPSPEED_MIN_WARMUP_STEPS)
    derived = {"warmup_num_steps": warmup, "warmup_max_lr": lr}
    if kind == "WarmupDecayLR":
        derived["total_num_steps"] = train.train_iters
        if warmup >= train.train_iters:
            raise ConfigError(
                f"the warm-up ({warmup} steps) must be shorter than train_iters ({train.train_iters}); "
                "lower lr_warmup_fraction / lr_warmup_iters or raise --train-iters"
            )
    origin = {
        "warmup_num_steps": "lr_warmup_fraction / lr_warmup_iters",
        "warmup_max_lr": "optimizer.params.lr",
        "total_num_steps": "train_iters",
    }
    for key, value in derived.items():
        written = params.get(key)
        if written is not None and written != value and not (key == "warmup_max_lr" and flags.lr is not None):
            raise ConfigError(
                f"{source}: scheduler.params.{key} is {written!r} but {origin[key]} gives {value!r}; "
                f"remove scheduler.params.{key} (it is derived)"
            )
        params[key] = value
    if flags.min_lr is not None:
        params["warmup_min_lr"] = flags.min_lr
    params.setdefault("warmup_min_lr", 0.0)
    params.setdefault("warmup_type", "linear")


def _check_zero(ds: dict, source: str) -> None:
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ConfigError(
            f"{source}: zero_optimization.stage {stage!r} is not supported: megatron_zh checkpoints and the "
            "Hugging Face export expect whole weights on every rank (ZeRO stage 0, 1 or 2; the recipe uses 1)"
        )


def resolve_deepspeed_config(
    ds: dict[str, Any], train: TrainConfig, flags: DeepSpeedOverrides, world_size: int, source: str
) -> dict[str, Any]:
    """A complete, self-consistent copy of the DeepSpeed dict (raises ConfigError on contradictions)."""
    ds = copy.deepcopy(ds)
    _check_zero(ds, source)
    _resolve_batch(ds, flags, world_size, source)
    _resolve_precision(ds, flags, source)
    lr = _resolve_optimizer(ds, flags, source)
    _resolve_scheduler(ds, train, lr, flags, source)
    return ds
