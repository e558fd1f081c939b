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

from megatron_zh.ops.kernels.common import device_guard, dot_precision, launch, tuning_configs, upcast_on_load

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


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    stride_ks,
    stride_vs,
    offs_m,
    offs_d,
    lo,
    hi,
    seq_len,
    qk_scale,
    seed,
    bh,
    dropout_p,
    MASKED: tl.constexpr,
    DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_t = _load_tile(k_base, offs_n, stride_ks, offs_d, seq_len, HEAD_DIM, True, UPCAST)
        v = _load_tile(v_base, offs_n, stride_vs, offs_d, seq_len, HEAD_DIM, False, UPCAST)
        s = tl.dot(q, k_t, input_precision=PRECISION) * qk_scale
        if MASKED:
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)  # the normaliser counts dropped entries too
        acc = acc * alpha[:, None]
        if DROPOUT:
            p = tl.where(_keep(seed, bh, offs_m[:, None], offs_n[None, :], dropout_p), p, 0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(
    configs=tuning_configs(_FWD_CONFIGS, _INTERPRETED), key=_KEY, prune_configs_by={"early_config_prune": _prune}
)
@triton.jit
def _attn_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    lse_ptr,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_ob,
    stride_oh,
    stride_os,
    n_heads,
    seq_len,
    qk_scale,
    seed,
    dropout_p,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    k_base = _head(k_ptr, bh, n_heads, stride_kb, stride_kh)
    v_base = _head(v_ptr, bh, n_heads, stride_vb, stride_vh)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(
        _head(q_ptr, bh, n_heads, stride_qb, stride_qh), offs_m, stride_qs, offs_d, seq_len, HEAD_DIM, False, UPCAST
    )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Key blocks wholly left of this query block need no mask; those up to its last row do.
    diagonal = (start_m // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        offs_m,
        offs_d,
        0,
        diagonal,
        seq_len,
        qk_scale,
        seed,
        bh,
        dropout_p,
        False,
        DROPOUT,
        UPCAST,
        PRECISION,
        HEAD_DIM,
        BLOCK_N,
    )
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        offs_m,
        offs_d,
        diagonal,
        tl.minimum(start_m + BLOCK_M, seq_len),
        seq_len,
        qk_scale,
        seed,
        bh,
        dropout_p,
        True,
        DROPOUT,
        UPCAST,
        PRECISION,
        HEAD_DIM,
        BLOCK_N,
    )
    out = acc / l_i[:, None]
    if DROPOUT:
        out = out * (1.0 / (1.0 - dropout_p))
    _store_tile(_head(o_ptr, bh, n_heads, stride_ob, stride_oh), offs_m, stride_os, offs_d, seq_len, out, HEAD_DIM)
    tl.store(lse_ptr + bh.to(tl.int64) * seq_len + offs_m, m_i + tl.log2(l_i), mask=offs_m < seq_len)


@triton.jit
def _attn_bwd_delta_kernel(
    o_ptr,
    do_ptr,
    delta_ptr,
    stride_ob,
    stride_oh,
    stride_os,
    stride_dob,
    stride_doh,
    stride_dos,
    n_heads,
    seq_len,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta[row] = <dO[row], O[row]>, the softmax-backward row term (also right under dropout)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_tile(
        _head(o_ptr, bh, n_heads, stride_ob, stride_oh), offs_m, stride_os, offs_d, seq_len, HEAD_DIM, False, True
    )
    do = _load_tile(
        _head(do_ptr, bh, n_heads, stride_dob, stride_doh), offs_m, stride_dos, offs_d, seq_len, HEAD_DIM, False, True
    )
    tl.store(delta_ptr + bh.to(tl.int64) * seq_len + offs_m, tl.sum(o * do, axis=1), mask=offs_m < seq_len)


@triton.jit
def _bwd_dkdv_inner(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    lse_row,
    delta_row,
    stride_qs,
    stride_dos,
    offs_n,
    offs_d,
    lo,
    hi,
    seq_len,
    qk_scale,
    seed,
    bh,
    dropout_p,
    MASKED: tl.constexpr,
    DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_t = _load_tile(q_base, offs_m, stride_qs, offs_d, seq_len, HEAD_DIM, True, UPCAST)
        do = _load_tile(do_base, offs_m, stride_dos, offs_d, seq_len, HEAD_DIM, False, UPCAST)
        # Padding rows get lse = +inf, hence probability 0 and no contribution.
        lse = tl.load(lse_row + offs_m, mask=offs_m < seq_len, other=float("inf"))
        delta = tl.load(delta_row + offs_m, mask=offs_m < seq_len, other=0.0)
        p_t = tl.exp2(tl.dot(k, q_t, input_precision=PRECISION) * qk_scale - lse[None, :])  # [BLOCK_N, BLOCK_M]
        if MASKED:
            p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        if DROPOUT:
            keep = _keep(seed, bh, offs_m[None, :], offs_n[:, None], dropout_p)
            inv_keep = 1.0 / (1.0 - dropout_p)
            dv = tl.dot(tl.where(keep, p_t * inv_keep, 0.0).to(do.dtype), do, dv, input_precision=PRECISION)
            dp_t = tl.where(keep, dp_t * inv_keep, 0.0)
        else:
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), dk, input_precision=PRECISION)
    return dk, dv


@triton.autotune(
    configs=tuning_configs(_DKDV_CONFIGS, _INTERPRETED), key=_KEY, prune_configs_by={"early_config_prune": _prune}
)
@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_dob,
    stride_doh,
    stride_dos,
    stride_dkb,
    stride_dkh,
    stride_dks,
    stride_dvb,
    stride_dvh,
    stride_dvs,
    n_heads,
    seq_len,
    sm_scale,
    qk_scale,
    seed,
    dropout_p,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(
        _head(k_ptr, bh, n_heads, stride_kb, stride_kh), offs_n, stride_ks, offs_d, seq_len, HEAD_DIM, False, UPCAST
    )
    v = _load_tile(
        _head(v_ptr, bh, n_heads, stride_vb, stride_vh), offs_n, stride_vs, offs_d, seq_len, HEAD_DIM, False, UPCAST
    )
    q_base = _head(q_ptr, bh, n_heads, stride_qb, stride_qh)
    do_base = _head(do_ptr, bh, n_heads, stride_dob, stride_doh)
    lse_row = lse_ptr + bh.to(tl.int64) * seq_len
    delta_row = delta_ptr + bh.to(tl.int64) * seq_len
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Query blocks above this key block see none of it; those starting before its end need the
    # mask; all later ones see all of it.
    first = (start_n // BLOCK_M) * BLOCK_M
    unmasked = tl.minimum(tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M, seq_len)
    dk, dv = _bwd_dkdv_inner(
        dk,
        dv,
        k,
        v,
        q_base,
        do_base,
        lse_row,
        delta_row,
        stride_qs,
        stride_dos,
        offs_n,
        offs_d,
        first,
        unmasked,
        seq_len,
        qk_scale,
        seed,
        bh,
        dropout_p,
        True,
        DROPOUT,
        UPCAST,
        PRECISION,
        HEAD_DIM,
        BLOCK_M,
    )
    dk, dv = _bwd_dkdv_inner(
        dk,
        dv,
        k,
        v,
        q_base,
        do_base,
        lse_row,
        delta_row,
        stride_qs,
        stride_dos,
        offs_n,
        offs_d,
        unmasked,
        seq_len,
        seq_len,
        qk_scale,
        seed,
        bh,
        dropout_p,
        False,
        DROPOUT,
        UPCAST,
        PRECISION,
        HEAD_DIM,
        BLOCK_M,
    )
    _store_tile(
        _head(dk_ptr, bh, n_heads, stride_dkb, stride_dkh), offs_n, stride_dks, offs_d, seq_len, dk * sm_scale, HEAD_DIM
    )
    _store_tile(_head(dv_ptr, bh, n_heads, stride_dvb, stride_dvh), offs_n, stride_dvs, offs_d, seq_len, dv, HEAD_DIM)


@triton.jit
def _bwd_dq_inner(
    dq,
    q,
    do,
    lse,
    delta,
    k_base,
    v_base,
    stride_ks,
    stride_vs,
    offs_m,
    offs_d,
    lo,
    hi,
    seq_len,
    qk_scale,
    seed,
    bh,
    dropout_p,
    MASKED: tl.constexpr,
    DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_t = _load_tile(k_base, offs_n, stride_ks, offs_d, seq_len, HEAD_DIM, True, UPCAST)
        v_t = _load_tile(v_base, offs_n, stride_vs, offs_d, seq_len, HEAD_DIM, True, UPCAST)
        p = tl.exp2(tl.dot(q, k_t, input_precision=PRECISION) * qk_scale - lse[:, None])
        if MASKED:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        dp = tl.dot(do, v_t, input_precision=PRECISION)
        if DROPOUT:
            keep = _keep(seed, bh, offs_m[:, None], offs_n[None, :], dropout_p)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k_t.dtype), tl.trans(k_t), dq, input_precision=PRECISION)
    return dq


@triton.autotune(
    configs=tuning_configs(_DQ_CONFIGS, _INTERPRETED), key=_KEY, prune_configs_by={"early_config_prune": _prune}
)
@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_dob,
    stride_doh,
    stride_dos,
    stride_dqb,
    stride_dqh,
    stride_dqs,
    n_heads,
    seq_len,
    sm_scale,
    qk_scale,
    seed,
    dropout_p,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(
        _head(q_ptr, bh, n_heads, stride_qb, stride_qh), offs_m, stride_qs, offs_d, seq_len, HEAD_DIM, False, UPCAST
    )
    do = _load_tile(
        _head(do_ptr, bh, n_heads, stride_dob, stride_doh), offs_m, stride_dos, offs_d, seq_len, HEAD_DIM, False, UPCAST
    )
    lse = tl.load(lse_ptr + bh.to(tl.int64) * seq_len + offs_m, mask=offs_m < seq_len, other=float("inf"))
    delta = tl.load(delta_ptr + bh.to(tl.int64) * seq_len + offs_m, mask=offs_m < seq_len, other=0.0)
    k_base = _head(k_ptr, bh, n_heads, stride_kb, stride_kh)
    v_base = _head(v_ptr, bh, n_heads, stride_vb, stride_vh)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    diagonal = (start_m // BLOCK_N) * BLOCK_N
    dq = _bwd_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        offs_m,
        offs_d,
        0,
        diagonal,
        seq_len,
        qk_scale,
        seed,
        bh,
        dropout_p,
        False,
        DROPOUT,
        UPCAST,
        PRECISION,
        HEAD_DIM,
        BLOCK_N,
    )
    dq = _bwd_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        offs_m,
        offs_d,
        diagonal,
        tl.minimum(start_m + BLOCK_M, seq_len),
        seq_len,
        qk_scale,
        seed,
        bh,
        dropout_p,
        True,
        DROPOUT,
        UPCAST,
        PRECISION,
        HEAD_DIM,
        BLOCK_N,
    )
    _store_tile(
        _head(dq_ptr, bh, n_heads, stride_dqb, stride_dqh), offs_m, stride_dqs, offs_d, seq_len, dq * sm_scale, HEAD_DIM
    )


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
    grid = lambda meta: (triton.cdiv(seq_len, meta["BLOCK_M"]), batch * heads)  # noqa: E731
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
        grid = lambda meta: (triton.cdiv(seq_len, meta["BLOCK_N"]), batch * heads)  # noqa: E731
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
        grid = lambda meta: (triton.cdiv(seq_len, meta["BLOCK_M"]), batch * heads)  # noqa: E731
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
