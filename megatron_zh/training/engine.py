"""The model wrapped in a DeepSpeed engine: ZeRO-partitioned AdamW, the lr schedule, mixed precision.

The optimizer and scheduler come from the DeepSpeed config (torch's AdamW under ZeRO's
partitioned optimizer, WarmupDecayLR). One exception: an Adam(W) section with
`"bias_correction": false` and no `torch_adam` (UER-py's AdamW, ds_configs/uer_stage*.json) would
make DeepSpeed compile FusedAdam; we build `megatron_zh.optim.UerAdamW` (the same update in torch
foreach ops) and hand it to deepspeed.initialize instead, with the config minus its "optimizer"
section (the scheduler's peak lr is already in scheduler.params) and, under ZeRO, with
"zero_allow_untested_optimizer" (ZeRO's list names classes, not updates). `run.deepspeed` keeps the
section as written: config.json and the model card say what the file said.

One adjustment to DeepSpeed's scheduler: it leaves the lr
at its warm-up start for the first *two* steps (the first `scheduler.step()` moves it from
iteration -1 to 0, which is still the start). We take that first step before training, so
iteration i (1-based) runs at the schedule's value for i - 1, as Megatron-LM and UER-py do:
lr 0 for step 1, peak * k / warmup for step k + 1, then linear decay to the floor at the end.
The scheduler's step count then always equals the iteration, which is what a checkpoint saves.

With --compile the model is compiled by DeepSpeed's own `engine.compile()`, which under ZeRO-1 is
`torch.compile` of the module in place (inductor): the engine, its hooks and the state dict's names
stay as they are, and the fused ops stay in the graph as custom ops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from megatron_zh.log import get_logger
from megatron_zh.model import GPT2Config, GPT2Model, LMLoss
from megatron_zh.ops import KernelChoice
from megatron_zh.optim import UerAdamW, uer_adamw_params
from megatron_zh.training.config.run_config import RunConfig

if TYPE_CHECKING:  # importing deepspeed takes seconds; only initialize_engine needs it at run time
    from deepspeed import DeepSpeedEngine

logger = get_logger(__name__)


COMPILE_BACKEND = "inductor"


def init_model(
    config: GPT2Config, seed: int, kernels: KernelChoice | None = None, *, lm_loss: LMLoss = "fused"
) -> GPT2Model:
    """The model, initialised from `seed` so every rank starts from the same weights; `kernels`: the
    run's fused-op choice (default: Triton on CUDA tensors, PyTorch code elsewhere); `lm_loss`: the LM
    head's loss path (model/lm_loss.py)."""
    torch.manual_seed(seed)
    return GPT2Model(config, kernel_backend=kernels or KernelChoice(), lm_loss=lm_loss)


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases, LayerNorm parameters (all 1-D) are not decayed (Megatron's rule)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def deepspeed_arguments(ds: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the config DeepSpeed is given, UerAdamW's arguments or None): see the module docstring."""
    uer_params = uer_adamw_params(ds["optimizer"])
    if uer_params is None:
        return ds, None
    config = {key: value for key, value in ds.items() if key != "optimizer"}
    if int((ds.get("zero_optimization") or {}).get("stage", 0)) > 0:
        config["zero_allow_untested_optimizer"] = True
    return config, uer_params


def initialize_engine(run: RunConfig, model: nn.Module) -> DeepSpeedEngine:
    """deepspeed.initialize with the run's resolved config. Returns the engine."""
    import deepspeed

    weight_decay = float(run.deepspeed["optimizer"].get("params", {}).get("weight_decay", 0.0))
    param_groups = optimizer_param_groups(model, weight_decay)
    config, uer_params = deepspeed_arguments(run.deepspeed)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups,
        optimizer=None if uer_params is None else UerAdamW(param_groups, **uer_params),
        config=config,
        dist_init_required=False,
    )
    return engine


def build_engine(run: RunConfig, kernels: KernelChoice) -> DeepSpeedEngine:
    """The run's model with its kernels, inside its DeepSpeed engine, compiled when --compile."""
    engine = initialize_engine(
        run, init_model(run.model, run.train.data.seed, kernels, lm_loss=run.train.model.lm_loss)
    )
    if run.train.compile:
        engine.compile(backend=COMPILE_BACKEND)
    return engine


def start_lr_schedule(engine: DeepSpeedEngine) -> None:
    """Advance a fresh DeepSpeed warm-up scheduler to iteration 0 (see the module docstring)."""
    scheduler = engine.lr_scheduler
    if scheduler is not None and getattr(scheduler, "last_batch_iteration", None) == -1:
        scheduler.step()


def current_lr(engine: DeepSpeedEngine) -> float:
    return float(engine.get_lr()[0])


def grad_norm(engine: DeepSpeedEngine) -> float | None:
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def loss_scale(engine: DeepSpeedEngine) -> float:
    """fp16's dynamic loss scale; 1.0 for fp32 and bf16."""
    scale = getattr(engine.optimizer, "cur_scale", None)
    return 1.0 if scale is None else float(scale)
