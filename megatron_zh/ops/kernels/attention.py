"""Causal flash attention (FlashAttention-2 scheme) with optional attention dropout.

Forward: one program per (query block, batch*head). It streams key/value blocks through an
online softmax in base 2, so no seq x seq matrix ever reaches memory, and it stops at the
diagonal: key blocks wholly above it are never loaded. Blocks strictly below the diagonal run
without masking; only the few that straddle it apply the causal mask. It saves the
log-sum-exp (base 2) of every row.
Backward: recomputes the probabilities from q, k and the saved log-sum-exp. One kernel walks
the query blocks under each key block for dK and dV, another walks the key blocks left of
each query block for dQ; neither uses atomics, so gradients are deterministic.
Dropout: the keep/drop decision for score (b*h, m, n) is Philox(seed; counter m, n, b*h), so the
backward, and any block size, reproduce exactly the mask the forward used.
All tensors are [batch, heads, seq, head_dim] with any strides whose last one is 1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from megatron_zh.ops.kernels.attention_bwd import _attn_bwd_delta_kernel, _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel
from megatron_zh.ops.kernels.attention_fwd import _attn_fwd_kernel
from megatron_zh.ops.kernels.attention_tiles import LOG2E, MAX_BATCH_HEADS, MAX_HEAD_DIM, _keep
from megatron_zh.ops.kernels.common import device_guard, dot_precision, launch, upcast_on_load


@triton.jit
def _keep_mask_kernel(mask_ptr, seq_len, seed, dropout_p, BLOCK: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_n = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    bh = tl.program_id(2)
    keep = _keep(seed, bh, offs_m[:, None], offs_n[None, :], dropout_p)
    inside = (offs_m < seq_len)[:, None] & (offs_n < seq_len)[None, :]
    tl.store(
        mask_ptr + (bh.to(tl.int64) * seq_len + offs_m[:, None]) * seq_len + offs_n[None, :],
        keep.to(tl.int8),
        mask=inside,
    )


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _statics(q: torch.Tensor, dropout_p: float) -> dict:
    batch, heads, _, head_dim = q.shape
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"causal_attention: the Triton kernel handles head_dim <= {MAX_HEAD_DIM}, got {head_dim}")
    if batch * heads > MAX_BATCH_HEADS:
        raise ValueError(
            f"causal_attention: batch * heads = {batch * heads} exceeds the {MAX_BATCH_HEADS} "
            "programs a CUDA grid's second axis allows; split the batch"
        )
    return dict(
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        DROPOUT=dropout_p > 0.0,
        UPCAST=upcast_on_load(q.dtype),
        PRECISION=dot_precision(q.dtype),
    )


def _bhsd_like(q: torch.Tensor) -> torch.Tensor:
    """An uninitialised [b, h, s, d] tensor laid out as [b, s, h, d]: merging heads back is free."""
    b, h, s, d = q.shape
    return q.new_empty((b, s, h, d)).transpose(1, 2)


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    dropout_p: float,
    seed: int,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out, lse): out like q (stored [b, s, h, d]), lse float32 [b*h, s] in base 2.

    config: a fixed {"BLOCK_M", "BLOCK_N", ...} instead of the autotuned one.
    """
    batch, heads, seq_len, _ = q.shape
    statics = _statics(q, dropout_p)
    out = _bhsd_like(q)
    lse = torch.empty((batch * heads, seq_len), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse

    def grid(meta: dict) -> tuple[int, ...]:
        return (triton.cdiv(seq_len, meta["BLOCK_M"]), batch * heads)

    with device_guard(q):
        launch(
            _attn_fwd_kernel,
            grid,
            q,
            k,
            v,
            out,
            lse,
            *_strides(q),
            *_strides(k),
            *_strides(v),
            *_strides(out),
            heads,
            seq_len,
            scale * LOG2E,
            seed,
            dropout_p,
            config=config,
            **statics,
        )
    return out, lse


def backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    dropout_p: float,
    seed: int,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of `forward`, recomputed from q, k, v and the saved lse."""
    batch, heads, seq_len, head_dim = q.shape
    statics = _statics(q, dropout_p)
    dq, dk, dv = _bhsd_like(q), _bhsd_like(k), _bhsd_like(v)
    if q.numel() == 0:
        return dq, dk, dv
    delta = torch.empty_like(lse)
    with device_guard(q):
        block_m = 64
        launch(
            _attn_bwd_delta_kernel,
            (triton.cdiv(seq_len, block_m), batch * heads),
            out,
            do,
            delta,
            *_strides(out),
            *_strides(do),
            heads,
            seq_len,
            HEAD_DIM=head_dim,
            BLOCK_D=statics["BLOCK_D"],
            BLOCK_M=block_m,
        )
        common = (heads, seq_len, scale, scale * LOG2E, seed, dropout_p)

        def grid(meta: dict) -> tuple[int, ...]:
            return (triton.cdiv(seq_len, meta["BLOCK_N"]), batch * heads)

        launch(
            _attn_bwd_dkdv_kernel,
            grid,
            q,
            k,
            v,
            do,
            lse,
            delta,
            dk,
            dv,
            *_strides(q),
            *_strides(k),
            *_strides(v),
            *_strides(do),
            *_strides(dk),
            *_strides(dv),
            *common,
            config=config,
            **statics,
        )

        def grid(meta: dict) -> tuple[int, ...]:
            return (triton.cdiv(seq_len, meta["BLOCK_M"]), batch * heads)

        launch(
            _attn_bwd_dq_kernel,
            grid,
            q,
            k,
            v,
            do,
            lse,
            delta,
            dq,
            *_strides(q),
            *_strides(k),
            *_strides(v),
            *_strides(do),
            *_strides(dq),
            *common,
            config=config,
            **statics,
        )
    return dq, dk, dv


def dropout_keep_mask(
    batch_heads: int, seq_len: int, dropout_p: float, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The keep-mask (bool [batch*heads, seq, seq]) that `forward` uses for this seed: for tests."""
    mask = torch.empty((batch_heads, seq_len, seq_len), dtype=torch.int8, device=device)
    block = 32
    grid = (triton.cdiv(seq_len, block), triton.cdiv(seq_len, block), batch_heads)
    with device_guard(mask):
        launch(_keep_mask_kernel, grid, mask, seq_len, seed, dropout_p, BLOCK=block)
    return mask.bool()
