"""Forward kernel of the causal flash attention (see attention.py for the scheme)."""

from __future__ import annotations

import triton
import triton.language as tl

from megatron_zh.ops.kernels.attention_tiles import (
    _FWD_CONFIGS,
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
