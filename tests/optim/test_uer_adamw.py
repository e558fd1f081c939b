"""UerAdamW against UER-py's update: a float64 reference of its formula, and its own fp32 op sequence."""

from __future__ import annotations

import copy

import pytest
import torch

from megatron_zh.optim import UerAdamW, uer_adamw_params

BETAS = (0.9, 0.999)
EPS = 1e-6
LRS = [2e-5, 4e-5, 6e-5, 8e-5, 1e-4]  # a warm-up: the lr changes every step


def problem(seed: int = 0) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """fp32 start weights and one gradient per tensor per step: several shapes, gradients from 1 down to
    1e-6 (near eps, where the missing bias correction matters most), some exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(48, 32), (32,), (5, 4, 3), (1,)]
    weights = [torch.randn(shape, generator=gen) * 0.02 for shape in shapes]
    weights[1] += 1.0  # a LayerNorm scale
    grads = []
    for step in range(len(LRS)):
        step_grads = [torch.randn(shape, generator=gen) * scale for shape, scale in zip(shapes, (1e-2, 1e-4, 1e-6, 1))]
        if step == 2:
            step_grads[0].view(-1)[::5] = 0.0
        grads.append(step_grads)
    return weights, grads


def uer_formula_float64(weights, grads, weight_decay: float) -> list[torch.Tensor]:
    """UER-py's AdamW (correct_bias=False) written out in float64."""
    beta1, beta2 = BETAS
    params = [w.double() for w in weights]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for lr, step_grads in zip(LRS, grads):
        for i, g in enumerate(step_grads):
            g = g.double()
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            params[i] = params[i] - lr * m[i] / (v[i].sqrt() + EPS)
            params[i] = params[i] - lr * weight_decay * params[i]
    return params


def uer_code_fp32(weights, grads, weight_decay: float) -> list[torch.Tensor]:
    """UER-py's loop body in fp32, its in-place ops in its order (uer/utils/optimizers.py, AdamW.step)."""
    beta1, beta2 = BETAS
    params = [w.clone() for w in weights]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for lr, step_grads in zip(LRS, grads):
        for p, exp_avg, exp_avg_sq, g in zip(params, m, v, step_grads):
            exp_avg.mul_(beta1).add_(g, alpha=1.0 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(EPS), value=-lr)
            if weight_decay > 0.0:
                p.add_(p, alpha=-lr * weight_decay)
    return params


def train(optimizer_cls, weights, grads, weight_decay: float, steps=None, optimizer=None, params=None):
    params = params if params is not None else [torch.nn.Parameter(w.clone()) for w in weights]
    if optimizer is None:
        optimizer = optimizer_cls(params, lr=LRS[0], betas=BETAS, eps=EPS, weight_decay=weight_decay)
    for step in steps if steps is not None else range(len(LRS)):
        for group in optimizer.param_groups:
            group["lr"] = LRS[step]
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_matches_uer_formula_in_float64_and_uer_code_bit_for_bit(weight_decay):
    weights, grads = problem()
    params, _ = train(UerAdamW, weights, grads, weight_decay)
    references = uer_formula_float64(weights, grads, weight_decay), uer_code_fp32(weights, grads, weight_decay)
    for mine, ref, code in zip(params, *references):
        # fp32 rounding of weights near 1 (the LayerNorm scale) is 6e-8 per operation
        torch.testing.assert_close(mine.detach().double(), ref, rtol=0, atol=3e-7)
        assert torch.equal(mine.detach(), code)


def test_differs_from_torch_adamw_which_corrects_the_bias():
    """The control: the reference tells the two updates apart (step 1 of torch's AdamW moves by ~lr, UER's by ~3 lr)."""
    weights, grads = problem()
    torch_params, _ = train(torch.optim.AdamW, weights, grads, 0.0)
    ours, _ = train(UerAdamW, weights, grads, 0.0)
    ref = uer_formula_float64(weights, grads, 0.0)
    assert max((p.detach().double() - r).abs().max().item() for p, r in zip(torch_params, ref)) > 1e-5
    assert max((p.detach().double() - r).abs().max().item() for p, r in zip(ours, ref)) < 3e-7


def test_state_uses_deepspeeds_names_and_resumes_bit_for_bit():
    weights, grads = problem()
    whole, _ = train(UerAdamW, weights, grads, 0.01)
    first, optimizer = train(UerAdamW, weights, grads, 0.01, steps=range(3))
    state = optimizer.state_dict()
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and state["state"][0]["step"] == 3
    params = [torch.nn.Parameter(p.detach().clone()) for p in first]
    resumed = UerAdamW(params, lr=LRS[0], betas=BETAS, eps=EPS, weight_decay=0.01)
    resumed.load_state_dict(copy.deepcopy(state))
    train(UerAdamW, weights, grads, 0.01, steps=range(3, 5), optimizer=resumed, params=params)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, whole))


def test_a_state_dict_shaped_like_fusedadams_continues():
    """FusedAdam's older checkpoints keep the step count in the group and none per parameter."""
    weights, grads = problem()
    whole, _ = train(UerAdamW, weights, grads, 0.0)
    first, optimizer = train(UerAdamW, weights, grads, 0.0, steps=range(2))
    state = copy.deepcopy(optimizer.state_dict())
    for entry in state["state"].values():
        del entry["step"]
    for group in state["param_groups"]:
        group.update(step=2, bias_correction=False, adam_w_mode=True)
    params = [torch.nn.Parameter(p.detach().clone()) for p in first]
    resumed = UerAdamW(params)
    resumed.load_state_dict(state)
    train(UerAdamW, weights, grads, 0.0, steps=range(2, 5), optimizer=resumed, params=params)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, whole))
    assert resumed.state[params[0]]["step"] == 5


def test_parameters_without_a_gradient_are_left_alone():
    frozen, trained = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = UerAdamW([frozen, trained], lr=0.1)
    trained.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(frozen.detach(), torch.ones(3)) and frozen not in optimizer.state
    assert (trained.detach() < 1).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "lr"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(betas=(0.9,)), "betas"),
        (dict(eps=-1e-8), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UerAdamW([torch.nn.Parameter(torch.zeros(1))], **kwargs)


@pytest.mark.parametrize(
    "section, chosen",
    [
        ({"type": "AdamW", "params": {"lr": 1e-4, "eps": 1e-6, "bias_correction": False}}, {"lr": 1e-4, "eps": 1e-6}),
        ({"type": "Adam", "params": {"lr": 1e-4, "bias_correction": False}}, {"lr": 1e-4}),
        ({"type": "adamw", "params": {"lr": 1e-4, "bias_correction": False, "torch_adam": False}}, {"lr": 1e-4}),
        ({"type": "AdamW", "params": {"lr": 1e-4}}, None),  # bias correction on: DeepSpeed's own
        ({"type": "AdamW", "params": {"lr": 1e-4, "bias_correction": False, "torch_adam": True}}, None),
        ({"type": "Adam", "params": {"lr": 1e-4, "bias_correction": False, "adam_w_mode": False}}, None),  # L2 Adam
        ({"type": "Lamb", "params": {"lr": 1e-4, "bias_correction": False}}, None),
    ],
)
def test_which_deepspeed_sections_select_it(section, chosen):
    assert uer_adamw_params(section) == chosen
