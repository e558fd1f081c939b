"""Validation loss and perplexity: token-weighted over a fixed set of validation batches, all ranks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from megatron_zh.training.distributed.process_group import all_reduce_sum
from megatron_zh.training.loaders import to_device


@dataclass(frozen=True)
class ValidationResult:
    loss: float  # mean cross-entropy per loss-mask token, nats
    perplexity: float
    tokens: int  # loss-mask tokens over all ranks


def validation_loss(
    model: nn.Module, loader: Iterable[dict[str, Any]], micro_batches: int, device: torch.device
) -> ValidationResult:
    """Mean loss over the first `micro_batches` micro-batches of `loader` on every rank, weighted by
    each micro-batch's loss-mask tokens. `model` is the DeepSpeed engine or a bare GPT2Model. Dropout
    is off; the model returns to training mode after."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with torch.no_grad():
            batches = iter(loader)
            for _ in range(micro_batches):
                batch = to_device(next(batches), device)
                loss = model(batch["input_ids"], labels=batch["labels"], loss_mask=batch["loss_mask"]).loss
                count = batch["loss_mask"].sum().double()
                loss_sum += loss.double() * count
                tokens += count
    finally:
        model.train()
    total_loss, total_tokens = all_reduce_sum([loss_sum, tokens], device)
    mean = total_loss / max(total_tokens, 1.0)
    return ValidationResult(loss=mean, perplexity=math.exp(min(mean, 700.0)), tokens=int(total_tokens))
