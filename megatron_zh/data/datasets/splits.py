"""Which documents go to train, valid and test: Megatron's split string and its rounding.

Both sample modes (packed windows and per-document chunks) cut a corpus with these two functions,
so a corpus's train/valid/test documents are the same whichever mode reads them.
"""

from __future__ import annotations

import math
import re

import numpy as np

from megatron_zh.errors import ConfigError

SPLIT_NAMES = ("train", "valid", "test")


def split_ranges(split: str) -> list[tuple[float, float] | None]:
    """Megatron's split string ("949,50,1", "98,2", "1") -> [start, end) fractions per split.

    Missing trailing weights are 0; a split of weight 0 is None. The arithmetic (float64
    normalisation, running sum) is Megatron's, so the document boundaries agree with it.
    """
    parts = [p.strip() for p in re.split(r"[,/]", str(split))]
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"split must be up to 3 comma-separated numbers like '949,50,1', got {split!r}") from None
    if not 1 <= len(weights) <= 3 or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(
            f"split must be 1 to 3 non-negative numbers with a positive sum (train,valid,test), got {split!r}"
        )
    weights += [0.0] * (3 - len(weights))
    fractions = (np.asarray(weights, dtype=np.float64) / np.sum(weights, dtype=np.float64)).tolist()
    ranges: list[tuple[float, float] | None] = []
    start = 0.0
    for fraction in fractions:
        end = start + fraction
        ranges.append((start, end) if end > start else None)
        start = end
    return ranges


def document_range(fractions: tuple[float, float], num_documents: int) -> tuple[int, int]:
    """The [begin, end) documents a split covers, rounded as Megatron rounds them."""
    return int(round(fractions[0] * float(num_documents))), int(round(fractions[1] * float(num_documents)))
