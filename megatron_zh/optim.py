"""UER-py's AdamW as a plain PyTorch optimizer: the UER recipe's update with nothing to compile.

UER-py trains with BERT's AdamW (uer/utils/optimizers.py, `correct_bias=False`), which updates every
parameter p with gradient g, in this order:

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr * m / (sqrt(v) + eps)        # no bias correction; eps outside the root
    p = p - lr * weight_decay * p           # decoupled decay, of the already updated p

`torch.optim.AdamW` always corrects the bias. DeepSpeed's Adam with `"bias_correction": false` does not,
but it is FusedAdam / DeepSpeedCPUAdam, C++/CUDA extensions compiled on first use (minutes). This class
is the update above in torch's foreach ops, one kernel per operation over all tensors of a group;
`training.engine` hands it to `deepspeed.initialize` as a client optimizer, and ZeRO then runs it on its
flat fp32 master partitions like any torch optimizer.

With weight decay the order differs from FusedAdam's, which decays before the step
(p - lr * (m / (sqrt(v) + eps) + weight_decay * p)): by lr^2 * weight_decay * m / (sqrt(v) + eps) per
step. The UER recipe has weight_decay 0, where the two are the same update.

The state per parameter uses the names DeepSpeed's Adams use ("step", "exp_avg", "exp_avg_sq"), so
DeepSpeed's checkpoints, `ds_to_universal` and a state dict written by FusedAdam all fit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch

# optimizer.params keys of a DeepSpeed config that UerAdamW takes, and those that only select it.
UER_ADAMW_PARAMS = ("lr", "betas", "eps", "weight_decay")
SELECTING_PARAMS = ("bias_correction", "adam_w_mode", "torch_adam")


def uer_adamw_params(section: dict[str, Any]) -> dict[str, Any] | None:
    """UerAdamW's arguments when a DeepSpeed "optimizer" section asks for UER-py's update: type Adam or
    AdamW with `"bias_correction": false`, decoupled decay and no `torch_adam` (what DeepSpeed would build
    as its compiled FusedAdam). None for any other section: DeepSpeed builds that one itself."""
    params = section.get("params") or {}
    kind = str(section.get("type", "")).lower()
    if kind not in ("adam", "adamw") or params.get("torch_adam") or params.get("bias_correction", True):
        return None
    if kind == "adam" and not params.get("adam_w_mode", True):
        return None  # Adam with L2 regularisation in the gradient: not UER-py's update
    return {key: params[key] for key in UER_ADAMW_PARAMS if key in params}


class UerAdamW(torch.optim.Optimizer):
    """AdamW without bias correction, decay after the step: UER-py's update (see the module docstring)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if not (number(lr) and lr >= 0.0):
            raise ValueError(f"lr must be a number >= 0, got {lr!r}")
        if len(betas) != 2 or not all(number(b) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not (number(eps) and eps >= 0.0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        if not (number(weight_decay) and weight_decay >= 0.0):
            raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # foreach kernels take one device and dtype per list.
            buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = defaultdict(list)
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("UerAdamW does not support sparse gradients")
                state = self.state[param]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                # Kept for checkpoints (the update does not use it); FusedAdam's older ones count in the group.
                state["step"] = int(state.get("step", group.get("step", 0))) + 1
                buckets[(param.device, param.dtype)].append(param)
            for params in buckets.values():
                self._update(params, group)
        return loss

    def _update(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        grads = [p.grad for p in params if p.grad is not None]  # all of them: step() chose these
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        # UER-py's own op sequence (mul_, add_, mul_, addcmul_, sqrt, add_, addcdiv_, add_): same rounding.
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denominators, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-lr)
        if weight_decay > 0.0:
            # p + (-lr * wd) * p, as UER-py writes it; p * (1 - lr * wd) would round the factor to 1 in fp32.
            torch._foreach_add_(params, params, alpha=-lr * weight_decay)
