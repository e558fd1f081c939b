"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p.

The order is the usual one (Hugging Face's logits warpers, Megatron's text generation):
divide by the temperature, keep the k most likely tokens, keep the smallest set of the rest whose
probability reaches p, then draw from what is left.

Each row draws from its own seeded CPU `torch.Generator`, so a prompt's sample depends on the
seed and its own logits only: not on the other prompts of its batch, nor on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megatron_zh.knobs import knob
from megatron_zh.validators import NON_NEGATIVE_INT, POSITIVE_NUMBER, PROBABILITY, int_below, validate_fields

DECODING = "decoding"  # the flags' help group
SAMPLING_KNOBS = ("temperature", "top_k", "top_p")  # what greedy decoding ignores


@dataclass(frozen=True)
class SamplingConfig:
    """greedy: always the most likely token (temperature, top_k, top_p are then ignored).
    top_k 0 and top_p 1.0 switch those filters off; the defaults are Hugging Face's."""

    greedy: bool = knob(False, help="always take the most likely token (no sampling)", group=DECODING)
    temperature: float = knob(1.0, help="divides the logits before sampling", check=POSITIVE_NUMBER, group=DECODING)
    top_k: int = knob(50, help="sample from the k most likely tokens (0 = all)", check=NON_NEGATIVE_INT, group=DECODING)
    top_p: float = knob(
        1.0,
        help="nucleus sampling: the most likely tokens up to this probability (1 = all)",
        check=PROBABILITY,
        group=DECODING,
    )
    seed: int = knob(1234, help="seeds each prompt's random stream", check=int_below(2**63, "2**63"), group=DECODING)

    def __post_init__(self) -> None:
        validate_fields(self, "sampling config")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits [rows, vocab] with every token outside the top-k / top-p support set to -inf.

    top_k keeps the k largest logits (ties at the k-th value may keep a few more); top_p keeps,
    in order of probability, the tokens until their cumulative probability reaches p (always at
    least the most likely one).
    """
    logits = logits.float()
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p  # the mass before this token already reaches p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def row_generators(seed: int, row_ids: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per row, seeded from (seed, row id): independent streams for each prompt."""
    generators = []
    for row_id in row_ids:
        state = np.random.SeedSequence([seed, row_id]).generate_state(2, dtype=np.uint32)
        generators.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return generators


def choose_tokens(logits: torch.Tensor, config: SamplingConfig, generators: Sequence[torch.Generator]) -> list[int]:
    """The next token of each row of `logits` [rows, vocab]; `generators[i]` draws for row i."""
    if config.greedy:
        return logits.argmax(dim=-1).tolist()
    filtered = filter_logits(logits.float() / config.temperature, config.top_k, config.top_p)
    probs = filtered.softmax(dim=-1).cpu()
    return [int(torch.multinomial(row, 1, generator=generator)) for row, generator in zip(probs, generators)]
