"""Backward kernels of the causal flash attention: delta, dK/dV, dQ (see attention.py for the scheme)."""

from __future__ import annotations

import triton
import triton.language as tl

from megatron_zh.ops.kernels.attention_tiles import (
    _DKDV_CONFIGS,
    _DQ_CONFIGS,
    _INTERPRETED,
    _KEY,
    _head,
    _keep,
    _load_tile,
    _prune,
    _store_tile,
)
from megatron_zh.ops.kernels.common import tuning_configs


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
