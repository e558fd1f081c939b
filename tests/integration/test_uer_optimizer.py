"""The UER-py recipe configs train on 2 CPU ranks with nothing compiled, and step as UER-py's AdamW does.

ds_configs/uer_stage{1,2}.json ask for DeepSpeed's AdamW with "bias_correction": false (UER-py's
correct_bias=False), which megatron_zh builds as optim.UerAdamW instead of DeepSpeed's JIT-compiled
FusedAdam. Each stage runs for real (pretrain_gpt.py, DeepSpeed ZeRO-1, 2 gloo ranks) with tiny overrides;
stage 2 starts from stage 1's checkpoint, as the recipe does. The reference replays the same micro-batches
(each rank's loader rebuilt here), takes the fp32 model's gradients and applies UER-py's update in float64.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_runs import REPO_ROOT, run

from megatron_zh.checkpoint.master_weights import read_fp32_weights
from megatron_zh.model import GPT2Model
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.distributed.process_group import DistEnv
from megatron_zh.training.loaders import build_datasets, build_loaders
from megatron_zh.training.metrics import read_metrics
from megatron_zh.training.preflight import check_vocab

RANKS, ITERATIONS = 2, 4
pytestmark = pytest.mark.integration


def uer_argv(stage: int, dataset: dict, save: Path, load: Path, weight_decay: float) -> list[str]:
    """The stage's config as the recipe has it, shrunk: gpt2-tiny, 4 steps of 8 x 32 tokens, no dropout."""
    flags = {
        "--ds_config": REPO_ROOT / "ds_configs" / f"uer_stage{stage}.json",
        "--data-path": dataset["prefix"],
        "--vocab-file": dataset["vocab"],
        "--save": save,
        "--load": load,
        "--model": "gpt2-tiny",
        "--seq-length": 32,
        "--micro-batch-size": 2,
        "--global-batch-size": 8,  # 2 micro-batches per rank and step
        "--train-iters": ITERATIONS,
        "--lr": 1e-3,
        "--weight-decay": weight_decay,
        "--hidden-dropout": 0,
        "--attention-dropout": 0,
        "--save-interval": ITERATIONS,
        "--eval-interval": 0,
        "--eval-iters": 1,
        "--log-interval": 1,
        "--num-workers": 0,
    }
    return [str(part) for pair in flags.items() for part in pair]


def uer_reference(
    argv: list[str], start: dict[str, torch.Tensor], lrs: list[float], correct_bias: bool = False
) -> dict[str, torch.Tensor]:
    """The run's parameters after its steps, UER-py's AdamW applied in float64 to the fp32 model's gradients
    of the micro-batches every rank drew (decay on matrices only, as training.engine groups them).
    correct_bias: UER-py's correct_bias=True, the step size torch.optim.AdamW uses (the control)."""
    run_config = build_run_config(build_parser().parse_args(argv), RANKS)
    params = run_config.deepspeed["optimizer"]["params"]
    (beta1, beta2), eps, weight_decay = params["betas"], params["eps"], params["weight_decay"]
    fingerprint, _, pad_id = check_vocab(run_config)
    train_dataset, _ = build_datasets(run_config, fingerprint, pad_id)
    loaders = [
        iter(build_loaders(run_config, DistEnv(rank, RANKS, rank, RANKS, "launcher"), train_dataset, None, 0)[0])
        for rank in range(RANKS)
    ]
    model = GPT2Model(run_config.model).train()
    names = [name for name, _ in model.named_parameters()]
    weights = {name: start[name].double() for name in names}
    exp_avg = {name: torch.zeros_like(w) for name, w in weights.items()}
    exp_avg_sq = {name: torch.zeros_like(w) for name, w in weights.items()}
    for step, lr in enumerate(lrs, start=1):
        if correct_bias:
            lr = lr * (1 - beta2**step) ** 0.5 / (1 - beta1**step)
        model.load_state_dict({name: w.float() for name, w in weights.items()}, strict=False)
        model.zero_grad()
        batches = [next(loader) for loader in loaders for _ in range(run_config.gradient_accumulation_steps)]
        for batch in batches:  # DeepSpeed's gradient: the mean over every micro-batch of every rank
            loss = model(batch["input_ids"], labels=batch["labels"], loss_mask=batch["loss_mask"]).loss
            (loss / len(batches)).backward()
        for name, param in model.named_parameters():
            grad = param.grad.double()
            exp_avg[name] = beta1 * exp_avg[name] + (1 - beta1) * grad
            exp_avg_sq[name] = beta2 * exp_avg_sq[name] + (1 - beta2) * grad * grad
            weights[name] = weights[name] - lr * exp_avg[name] / (exp_avg_sq[name].sqrt() + eps)
            if param.dim() >= 2:
                weights[name] = weights[name] - lr * weight_decay * weights[name]
    return weights


def run_stage(stage: int, dataset: dict, save: Path, load: Path, weight_decay: float) -> tuple[list[str], str]:
    argv = uer_argv(stage, dataset, save, load, weight_decay)
    output = run(["pretrain_gpt.py", *argv], ranks=RANKS, timeout=300)
    # DeepSpeed's FusedAdam / CPUAdam would be JIT-compiled here (about 7 minutes on 2 cores).
    assert "fused_adam" not in output.lower() and "cpu_adam" not in output.lower(), output[-3000:]
    assert (save / "latest").read_text().strip() == f"global_step{ITERATIONS}"
    return argv, output


def test_uer_recipe_stages_train_without_a_build_and_step_as_uer_py(tmp_path, zh_text_document):
    stage1, stage2 = tmp_path / "uer_stage1", tmp_path / "uer_stage2"
    argv1, _ = run_stage(1, zh_text_document, stage1, stage1, weight_decay=0.0)  # the recipe's decay
    argv2, _ = run_stage(2, zh_text_document, stage2, stage1, weight_decay=0.01)  # the decay order, exercised

    run_config = build_run_config(build_parser().parse_args(argv1), RANKS)
    torch.manual_seed(run_config.train.data.seed)  # training.engine.init_model: the run's initial weights
    initial = GPT2Model(run_config.model).state_dict()
    stage1_weights, _ = read_fp32_weights(stage1 / f"global_step{ITERATIONS}")
    stage2_weights, _ = read_fp32_weights(stage2 / f"global_step{ITERATIONS}")
    for argv, start, save, trained in (
        (argv1, initial, stage1, stage1_weights),
        (argv2, stage1_weights, stage2, stage2_weights),  # stage 2 fine-tunes stage 1's weights, fresh optimizer
    ):
        lrs = [record["lr"] for record in read_metrics(save / "metrics.jsonl")]
        assert len(lrs) == ITERATIONS and lrs[0] == 0.0 and max(lrs) == pytest.approx(1e-3)  # the warm-up ran
        reference = uer_reference(argv, start, lrs)
        worst = max((trained[name].double() - ref).abs().max().item() for name, ref in reference.items())
        moved = max((trained[name].double() - start[name].double()).abs().max().item() for name in reference)
        corrected = uer_reference(argv, start, lrs, correct_bias=True)
        control = max((trained[name].double() - ref).abs().max().item() for name, ref in corrected.items())
        print(f"{save.name}: max |engine - UER-py| {worst:.3g}, - bias-corrected {control:.3g}, moved {moved:.3g}")
        assert worst < 2e-6, f"{save.name}: engine vs UER-py's update in float64: max |diff| {worst:.3g}"
        assert moved > 1e-3  # the steps did move the weights: the comparison is not between two starts
        assert control > 1e-4  # and tells UER-py's update from torch's AdamW, which corrects the bias
