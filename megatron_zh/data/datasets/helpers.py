"""Python face of the C++ index builders in `megatron_zh._helpers` (csrc/helpers.cpp).

The extension mirrors megatron-core's `helpers_cpp` (same names, argument order, dtypes and
outputs) and releases the GIL while it works. `build_sample_idx` picks the narrowest index dtype
that cannot overflow, as megatron-core's `helpers.build_sample_idx` does.
"""

from __future__ import annotations

import numpy as np

from megatron_zh.errors import MegatronZhError

try:
    from megatron_zh._helpers import (
        build_blending_indices,
        build_document_chunk_idx,
        build_exhaustive_blending_indices,
        build_sample_idx_int32,
        build_sample_idx_int64,
    )
except ImportError as exc:  # pragma: no cover - depends on how the package was installed
    raise MegatronZhError(
        "the C++ index helper megatron_zh._helpers is not built; run `pip install -e .` in the "
        f"repository root (it needs a C++17 compiler). Import error: {exc}"
    ) from exc

__all__ = [
    "build_blending_indices",
    "build_document_chunk_idx",
    "build_exhaustive_blending_indices",
    "build_sample_idx",
    "build_sample_idx_int32",
    "build_sample_idx_int64",
]

_INT32_MAX = np.iinfo(np.int32).max


def build_sample_idx(
    sizes: np.ndarray,
    document_indices: np.ndarray,
    sequence_length: int,
    num_epochs: int,
    tokens_per_epoch: int,
    drop_last_partial_sequence: bool = True,
    add_extra_token_to_sequence: bool = True,
) -> np.ndarray:
    """The [num_samples + 1, 2] sample index, int32 when every entry fits and int64 otherwise.

    Entries are positions in `document_indices` and token offsets inside one document. Offsets
    always fit in int32 (document lengths are int32), so only the length of `document_indices`
    (documents x epochs) decides; `sizes` is not scanned, which keeps a memory-mapped one untouched.
    """
    build = build_sample_idx_int32 if len(document_indices) <= _INT32_MAX else build_sample_idx_int64
    return build(
        sizes,
        document_indices,
        sequence_length,
        num_epochs,
        tokens_per_epoch,
        drop_last_partial_sequence,
        1 if add_extra_token_to_sequence else 0,
    )
