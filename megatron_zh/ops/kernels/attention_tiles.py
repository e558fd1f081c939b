"""Shared pieces of the causal flash-attention kernels: tilings, the dropout hash, tile loads/stores."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
MAX_BATCH_HEADS = 65535  # grid axis 1 carries batch * heads

# Few configs on purpose: each one is a compile (seconds) per (dropout, dtype, head_dim) variant.
# Chosen around FlashAttention-2 tilings for head_dim 64 on Hopper/Ampere.
_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in (
        (64, 32, 4, 4),
        (64, 64, 4, 3),
        (128, 32, 4, 4),
        (128, 64, 4, 3),
        (128, 64, 8, 3),
        (128, 128, 8, 2),
    )
]
_DKDV_CONFIGS = [  # key blocks stay resident while query blocks stream past
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in ((32, 64, 4, 3), (32, 128, 8, 3), (64, 64, 4, 2), (64, 128, 8, 2))
]
_DQ_CONFIGS = [  # query blocks stay resident while key blocks stream past
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in ((64, 32, 4, 3), (128, 32, 8, 3), (64, 64, 4, 2), (128, 64, 8, 2))
]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    # float32 tiles take twice the shared memory and compile slowly (no tensor-core path under
    # "ieee" precision): try only the small tilings.
    if named_args["q_ptr"].dtype != torch.float32:
        return configs
    small = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
    return small or configs[:1]


# One fixed config for the interpreter, whose cost is per block step rather than per element:
# blocks big enough to keep seq 1000 quick, small enough that test sequences of 129+ tokens span
# several blocks (both the unmasked and the diagonal paths run). Tests also force other tilings.
_INTERPRETED = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=1)

_KEY = ["seq_len", "HEAD_DIM", "DROPOUT"]


@triton.jit
def _keep(seed, bh, m_index, n_index, dropout_p):
    """Dropout keep-mask for the scores at query rows m_index and key columns n_index."""
    zero = (m_index + n_index) * 0
    c0 = (m_index + zero).to(tl.uint32)
    c1 = (n_index + zero).to(tl.uint32)
    c2 = (zero + bh).to(tl.uint32)
    c3 = zero.to(tl.uint32)
    r0, _, _, _ = tl.philox(seed, c0, c1, c2, c3)
    return tl.uint_to_uniform_float(r0) >= dropout_p


@triton.jit
def _head(ptr, bh, n_heads, stride_b, stride_h):
    """Base pointer of the [seq, head_dim] matrix of program row bh = batch * n_heads + head."""
    return ptr + (bh // n_heads).to(tl.int64) * stride_b + (bh % n_heads).to(tl.int64) * stride_h


@triton.jit
def _load_tile(
    base, rows, stride, offs_d, seq_len, HEAD_DIM: tl.constexpr, TRANSPOSED: tl.constexpr, UPCAST: tl.constexpr
):
    """Rows `rows` of a [seq, head_dim] matrix as a [rows, d] tile ([d, rows] if TRANSPOSED),
    zero past the sequence end and past head_dim."""
    if TRANSPOSED:
        tile = tl.load(
            base + rows[None, :] * stride + offs_d[:, None],
            mask=(rows < seq_len)[None, :] & (offs_d < HEAD_DIM)[:, None],
            other=0.0,
        )
    else:
        tile = tl.load(
            base + rows[:, None] * stride + offs_d[None, :],
            mask=(rows < seq_len)[:, None] & (offs_d < HEAD_DIM)[None, :],
            other=0.0,
        )
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _store_tile(base, rows, stride, offs_d, seq_len, value, HEAD_DIM: tl.constexpr):
    tl.store(
        base + rows[:, None] * stride + offs_d[None, :],
        value.to(base.dtype.element_ty),
        mask=(rows < seq_len)[:, None] & (offs_d < HEAD_DIM)[None, :],
    )
