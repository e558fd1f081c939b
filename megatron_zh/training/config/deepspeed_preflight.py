"""What DeepSpeed would reject in the DeepSpeed half of a config, found before the process group starts.

DeepSpeed checks most of its config only inside `deepspeed.initialize`: after the process group,
the dataset indices and the model are built, and then as an assertion or a TypeError deep in its
engine. Here the same rules run up front, against DeepSpeed 0.19's own definitions:

- the sections DeepSpeed parses with pydantic models (fp16, bf16, zero_optimization, ...): built
  with DeepSpeed's own `DeepSpeedConfig`, each error named by its key path;
- `data_types.grad_accum_dtype`: DeepSpeed's `DtypeEnum`, and the mixes its engine supports;
- the optimizer: a type DeepSpeed knows (its list, or a `torch.optim` class), the class DeepSpeed
  will construct for it, and every `optimizer.params` key against that constructor's signature;
  `betas` is two numbers; torch optimizers are built on a dummy parameter and stepped once, so a bad
  value (a beta of 1.5) is found too; an Adam(W) with `"bias_correction": false` is checked against
  `optim.UerAdamW`, which we build for it instead of DeepSpeed's compiled FusedAdam (see training/engine.py);
- the scheduler: a DeepSpeed schedule or a `torch.optim.lr_scheduler` class, its params against its
  signature, `warmup_type` (DeepSpeed would silently fall back to "log"), then built on a dummy
  optimizer.
"""

from __future__ import annotations

import collections.abc
import copy
import difflib
import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch

from megatron_zh.errors import ConfigError
from megatron_zh.optim import SELECTING_PARAMS, UerAdamW, uer_adamw_params

# Keys DeepSpeed's engine pops from optimizer.params before calling the constructor (_configure_basic_optimizer,
# get_optimizer_configuration); "foreach" is taken only with torch_adam.
_ADAM_ENGINE_KEYS = ("adam_w_mode", "torch_adam", "fp32_optimizer_states")
# Pydantic model -> the config key it parses, to name the key path of an error.
_SECTION_OF_MODEL = {
    "DeepSpeedFP16Config": "fp16",
    "DeepSpeedBF16Config": "bf16",
    "DeepSpeedZeroConfig": "zero_optimization",
    "DeepSpeedActivationCheckpointingConfig": "activation_checkpointing",
    "DeepSpeedFlopsProfilerConfig": "flops_profiler",
    "DeepSpeedCommsConfig": "comms_logger",
    "DeepSpeedMonitorConfig": "tensorboard/wandb/csv_monitor",
}


def _close(name: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def _qualified(cls: type) -> str:
    """torch.optim.AdamW rather than torch.optim.adamw.AdamW: the name users write."""
    for public in ("torch.optim.lr_scheduler", "torch.optim"):
        if cls.__module__.startswith(public) and getattr(importlib.import_module(public), cls.__name__, None) is cls:
            return f"{public}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__name__}"


def _keywords(fn: Callable[..., Any], skip: int) -> tuple[list[str], list[str], bool]:
    """(accepted keyword names, required names, takes **kwargs) of a constructor, after `skip` positionals."""
    params = list(inspect.signature(fn).parameters.values())
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][skip:]
    required = [p.name for p in named if p.default is p.empty]
    return [p.name for p in named], required, any(p.kind is p.VAR_KEYWORD for p in params)


def _check_params(
    params: dict[str, Any], fn: Callable[..., Any], skip: int, what: str, where: str, source: str, supplied: tuple = ()
) -> None:
    """Every key of `params` is a keyword of `fn`; every required keyword is given."""
    accepted, required, var_kw = _keywords(fn, skip)
    if not var_kw:
        for key in params:
            if key not in accepted:
                raise ConfigError(
                    f"{source}: {where}.{key} is not a parameter of {what}{_close(key, accepted)} "
                    f"(it takes: {', '.join(accepted)})"
                )
    missing = [name for name in required if name not in params and name not in supplied]
    if missing:
        raise ConfigError(f"{source}: {where} lacks {', '.join(missing)}, which {what} requires")


def _pydantic_error(exc: Exception, source: str) -> ConfigError:
    errors = exc.errors() if hasattr(exc, "errors") else []
    title = getattr(exc, "title", "DeepSpeed config")
    if not errors:
        return ConfigError(f"{source}: DeepSpeed rejects the config: {str(exc).splitlines()[0]}")
    first = errors[0]
    path = ".".join(str(part) for part in (_SECTION_OF_MODEL.get(title, title), *first.get("loc", ())))
    value = f" (got {first['input']!r})" if "input" in first and first.get("type") != "missing" else ""
    return ConfigError(f"{source}: {path}: {first.get('msg', 'invalid')}{value}; DeepSpeed's {title} rejects it")


class _KeysRead(dict):
    """A dict that records every key looked up in it, present or not: what DeepSpeedConfig reads is what it knows."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[Any] = set()

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def keys(self) -> Any:  # `KEY in param_dict.keys()` is how some DeepSpeed sections look
        return collections.abc.KeysView(self)


def check_sections(ds: dict[str, Any], source: str) -> None:
    """Parse the config with DeepSpeed's DeepSpeedConfig, as deepspeed.initialize will, and refuse a top-level
    key it never reads: DeepSpeed ignores those without a word, so a typo ("gradient_clippin") would quietly
    train without what the user asked for."""
    from deepspeed.runtime.config import DeepSpeedConfig

    trial = _KeysRead(copy.deepcopy(ds))
    # Without a process group DeepSpeedConfig assumes 1 rank: give it the batch arithmetic of one rank
    # (the real world size was checked when the batch was resolved).
    trial["train_batch_size"] = trial["train_micro_batch_size_per_gpu"] * trial["gradient_accumulation_steps"]
    try:
        DeepSpeedConfig(trial)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise _pydantic_error(exc, source) from None
    except (AssertionError, KeyError, TypeError) as exc:
        raise ConfigError(f"{source}: DeepSpeed rejects the config: {exc}") from None
    known = sorted(key for key in trial.read if isinstance(key, str))
    for key in ds:
        if key not in trial.read:
            raise ConfigError(
                f"{source}: unknown key {key!r}{_close(str(key), known)} (DeepSpeed does not read it and would "
                "ignore it); correct or remove it"
            )


def check_data_types(ds: dict[str, Any], source: str) -> None:
    from deepspeed.runtime.config import DtypeEnum

    accum = (ds.get("data_types") or {}).get("grad_accum_dtype")
    if accum is None:
        return
    try:
        accum_dtype = DtypeEnum(accum).value
    except ValueError:
        names = ["fp32", "bf16", "fp16"]
        raise ConfigError(
            f"{source}: data_types.grad_accum_dtype {accum!r} is not a dtype DeepSpeed knows; use one of {names}"
        ) from None
    model_dtype = torch.bfloat16 if ds["bf16"]["enabled"] else torch.float16 if ds["fp16"]["enabled"] else torch.float32
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage == 0 and accum_dtype != model_dtype:
        raise ConfigError(
            f"{source}: data_types.grad_accum_dtype {accum!r} with {model_dtype} weights needs ZeRO "
            "(zero_optimization.stage 1 or 2); without it DeepSpeed supports only the model's own dtype"
        )


def _optimizer_class(name: str, params: dict[str, Any], ds: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
    """The class deepspeed.initialize constructs for optimizer `name` (lower-cased DeepSpeed name or a
    torch.optim class name), and the keywords DeepSpeed passes to it itself."""
    offload = ((ds.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
    if name in ("adam", "adamw"):
        adamw = name == "adamw" or params.get("adam_w_mode", True)
        if params.get("torch_adam"):
            return (torch.optim.AdamW if adamw else torch.optim.Adam), ("foreach",)
        if offload:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam, ("adamw_mode", "fp32_optimizer_states")
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam, ("adam_w_mode",)
    if name == "adagrad":
        if offload:
            from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad

            return DeepSpeedCPUAdagrad, ()
        return torch.optim.Adagrad, ()
    if name == "lamb":
        from deepspeed.ops.lamb import FusedLamb

        return FusedLamb, ()
    if name == "lion":
        if offload:
            from deepspeed.ops.lion import DeepSpeedCPULion

            return DeepSpeedCPULion, ()
        from deepspeed.ops.lion import FusedLion

        return FusedLion, ()
    return getattr(torch.optim, name), ()


def check_optimizer(ds: dict[str, Any], source: str) -> None:
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS
    from deepspeed.runtime.zero.utils import ZERO_SUPPORTED_OPTIMIZERS

    optimizer = ds["optimizer"]
    kind, params = optimizer["type"], dict(optimizer.get("params") or {})
    torch_names = [
        n for n, c in vars(torch.optim).items() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)
    ]
    torch_names.remove("Optimizer")
    if not isinstance(kind, str):
        raise ConfigError(f"{source}: optimizer.type must be a string, got {kind!r}")
    name = kind.lower() if kind.lower() in DEEPSPEED_OPTIMIZERS else kind
    if name not in DEEPSPEED_OPTIMIZERS and name not in torch_names:
        known = ["Adam", "AdamW", "Adagrad", "Lamb", "Lion", "MuAdam", "MuAdamW", "MuSGD", "Muon"]
        raise ConfigError(
            f"{source}: optimizer.type {kind!r} is not an optimizer DeepSpeed knows{_close(kind, known + torch_names)} "
            f"(DeepSpeed's: {', '.join(known)}; or a torch.optim class: {', '.join(sorted(torch_names))})"
        )
    if "max_grad_norm" in params:
        raise ConfigError(
            f"{source}: optimizer.params.max_grad_norm is not supported by DeepSpeed; use the top-level "
            '"gradient_clipping" (or --clip-grad)'
        )
    if name.startswith("mu"):
        return  # MuAdam/MuSGD come from the optional `mup` package, Muon builds its own groups: not checked
    if uer_adamw_params(optimizer) is not None:
        _check_uer_adamw(ds, params, source)
        return
    cls, engine_kwargs = _optimizer_class(name, params, ds)
    if name in ("adam", "adamw"):
        params = {k: v for k, v in params.items() if k not in _ADAM_ENGINE_KEYS}
        if cls.__module__.startswith("torch.optim"):
            params.pop("foreach", None)
    what = _qualified(cls)
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage and cls not in ZERO_SUPPORTED_OPTIMIZERS and not ds.get("zero_allow_untested_optimizer"):
        raise ConfigError(
            f"{source}: optimizer.type {kind!r} ({what}) is not one DeepSpeed has tested with ZeRO; set "
            '"zero_allow_untested_optimizer": true to use it anyway, or choose AdamW'
        )
    _check_params(params, cls.__init__, 2, what, "optimizer.params", source, engine_kwargs)
    _check_betas(params, source)
    if cls.__module__.startswith("torch.optim"):
        _build_and_step(cls, params, what, source)


def _check_uer_adamw(ds: dict[str, Any], params: dict[str, Any], source: str) -> None:
    what = 'UER-py\'s AdamW (megatron_zh.optim.UerAdamW, built for "bias_correction": false)'
    offload = ((ds.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
    if offload:
        raise ConfigError(
            f"{source}: zero_optimization.offload_optimizer cannot run {what}: ZeRO-Offload takes only DeepSpeed's "
            'own CPU optimizers; remove offload_optimizer, or drop "bias_correction": false for DeepSpeedCPUAdam'
        )
    params = {key: value for key, value in params.items() if key not in SELECTING_PARAMS}
    _check_params(params, UerAdamW.__init__, 2, what, "optimizer.params", source)
    _check_betas(params, source)
    _build_and_step(UerAdamW, params, what, source)


def _check_betas(params: dict[str, Any], source: str) -> None:
    betas = params.get("betas")
    if betas is not None and not (
        isinstance(betas, list) and len(betas) == 2 and all(isinstance(b, (int, float)) for b in betas)
    ):
        raise ConfigError(
            f"{source}: optimizer.params.betas must be two numbers [beta1, beta2] (e.g. [0.9, 0.999]), got {betas!r}"
        )


def _build_and_step(cls: type, params: dict[str, Any], what: str, source: str) -> None:
    """Built on a dummy parameter and stepped once: some values pass the constructor and fail only at the
    first step, after the whole start-up."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    parameter.grad = torch.zeros(1)
    try:
        cls([parameter], **params).step()
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"{source}: optimizer.params: {what} rejects them: {exc}") from None


def check_scheduler(ds: dict[str, Any], source: str) -> None:
    from deepspeed.runtime import lr_schedules

    scheduler = ds.get("scheduler")
    if scheduler is None:
        return
    if not isinstance(scheduler, dict) or not isinstance(scheduler.get("type"), str):
        raise ConfigError(f'{source}: scheduler must be an object with a "type" (e.g. "WarmupDecayLR")')
    kind, params = scheduler["type"], dict(scheduler.get("params") or {})
    torch_names = [
        n
        for n, c in vars(torch.optim.lr_scheduler).items()
        if isinstance(c, type) and issubclass(c, torch.optim.lr_scheduler.LRScheduler) and not n.startswith("_")
    ]
    if kind in lr_schedules.VALID_LR_SCHEDULES:
        cls = getattr(lr_schedules, kind)
    elif kind in torch_names:
        cls = getattr(torch.optim.lr_scheduler, kind)
    else:
        known = list(lr_schedules.VALID_LR_SCHEDULES)
        raise ConfigError(
            f"{source}: scheduler.type {kind!r} is not a schedule DeepSpeed knows{_close(kind, known + torch_names)} "
            f"(DeepSpeed's: {', '.join(known)}; or a torch.optim.lr_scheduler class)"
        )
    what = _qualified(cls)
    _check_params(params, cls.__init__, 2, what, "scheduler.params", source)
    warmup_type = params.get("warmup_type")
    if "warmup_type" in _keywords(cls.__init__, 2)[0] and warmup_type not in (None, "log", "linear"):
        raise ConfigError(
            f'{source}: scheduler.params.warmup_type {warmup_type!r} must be "linear" or "log" '
            "(DeepSpeed would silently use log)"
        )
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float(ds["optimizer"]["params"]["lr"]))
    quiet = logging.getLogger("DeepSpeed")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # a schedule built before its first step warns that it has not started
    try:
        cls(dummy, **params)
    except (ValueError, TypeError, AssertionError, ZeroDivisionError) as exc:
        raise ConfigError(f"{source}: scheduler.params: {what} rejects them: {exc}") from None
    finally:
        quiet.setLevel(level)


def check_deepspeed_config(ds: dict[str, Any], source: str) -> None:
    """Everything deepspeed.initialize would reject in the resolved DeepSpeed dict, as one ConfigError."""
    check_sections(ds, source)
    check_data_types(ds, source)
    check_optimizer(ds, source)
    check_scheduler(ds, source)
