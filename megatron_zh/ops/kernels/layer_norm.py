"""Fused LayerNorm over the last dimension: forward, and backward for dx, dweight and dbias.

Forward: each program normalises ROWS rows held in registers (two-pass mean/variance in float32)
and saves the per-row mean and 1/std for the backward.
Backward: a grid-stride kernel computes dx row by row and folds dy*x_hat and dy into per-program
float32 partial sums of dweight and dbias; a second kernel sums the partials column-parallel.
That is a two-level parallel reduction with a fixed order, so gradients are deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from megatron_zh.ops.kernels.common import device_guard, launch, parallel_programs, tuning_configs

MAX_COLS = 65536 // 4  # a row must fit a program's registers (in float32)

_GPU_CONFIGS = [triton.Config({"ROWS": rows}, num_warps=warps) for rows in (1, 2, 4, 8) for warps in (2, 4, 8, 16)]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    block = kwargs["BLOCK_N"]

    def fits(config: triton.Config) -> bool:
        tile = config.kwargs["ROWS"] * block
        return tile <= 8192 and 32 * config.num_warps <= tile

    kept = [c for c in configs if fits(c)]
    return kept or [min(configs, key=lambda c: (c.num_warps, -c.kwargs["ROWS"]))]


_autotune = triton.autotune(
    configs=tuning_configs(_GPU_CONFIGS, triton.Config({"ROWS": 4}, num_warps=4)),
    key=["n_cols"],
    prune_configs_by={"early_config_prune": _prune},
)


@_autotune
@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    n_rows,
    n_cols,
    stride_x,
    stride_y,
    eps,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / n_cols
    centered = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = centered * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + rows64[:, None] * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@_autotune
@triton.jit
def _layer_norm_bwd_dx_kernel(
    x_ptr,
    w_ptr,
    mean_ptr,
    rstd_ptr,
    dy_ptr,
    dx_ptr,
    partial_dw_ptr,
    partial_db_ptr,
    n_rows,
    n_cols,
    stride_x,
    stride_dy,
    stride_dx,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    rows_per_program = tl.cdiv(n_rows, tl.num_programs(0))
    row_begin = pid * rows_per_program
    row_end = tl.minimum(row_begin + rows_per_program, n_rows)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(row_begin, row_end, ROWS):
        rows = start + tl.arange(0, ROWS)
        row_ok = rows < row_end
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        x_hat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        w_dy = w[None, :] * dy
        # dx = rstd * (w*dy - mean(w*dy) - x_hat * mean(w*dy * x_hat))
        c_hat = tl.sum(x_hat * w_dy, axis=1) / n_cols
        c_one = tl.sum(w_dy, axis=1) / n_cols
        dx = (w_dy - (x_hat * c_hat[:, None] + c_one[:, None])) * rstd[:, None]
        tl.store(dx_ptr + rows64[:, None] * stride_dx + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw_acc += tl.sum(dy * x_hat, axis=0)
        db_acc += tl.sum(dy, axis=0)
    tl.store(partial_dw_ptr + pid * n_cols + cols, dw_acc, mask=col_ok)
    tl.store(partial_db_ptr + pid * n_cols + cols, db_acc, mask=col_ok)


@triton.jit
def _column_sum_kernel(
    partial_dw_ptr,
    partial_db_ptr,
    dw_ptr,
    db_ptr,
    n_partials,
    n_cols,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < n_cols
    dw = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for start in range(0, n_partials, BLOCK_P):
        parts = start + tl.arange(0, BLOCK_P)
        mask = (parts[:, None] < n_partials) & col_ok[None, :]
        offsets = parts[:, None] * n_cols + cols[None, :]
        dw += tl.load(partial_dw_ptr + offsets, mask=mask, other=0.0)
        db += tl.load(partial_db_ptr + offsets, mask=mask, other=0.0)
    tl.store(dw_ptr + cols, tl.sum(dw, axis=0).to(dw_ptr.dtype.element_ty), mask=col_ok)
    tl.store(db_ptr + cols, tl.sum(db, axis=0).to(db_ptr.dtype.element_ty), mask=col_ok)


def _block(n_cols: int) -> int:
    if n_cols > MAX_COLS:
        raise ValueError(
            f"layer_norm: the Triton kernel handles at most {MAX_COLS} features, got {n_cols}; use backend='torch'"
        )
    return triton.next_power_of_2(n_cols)


def forward(
    x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, config: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm of a contiguous [rows, cols] matrix; returns (y, mean, rstd), stats in float32."""
    n_rows, n_cols = x2d.shape
    block = _block(n_cols)
    y = torch.empty_like(x2d)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x2d.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x2d.device)
    if n_rows == 0:
        return y, mean, rstd

    def grid(meta: dict) -> tuple[int, ...]:
        return (triton.cdiv(n_rows, meta["ROWS"]),)

    with device_guard(x2d):
        launch(
            _layer_norm_fwd_kernel,
            grid,
            x2d,
            weight,
            bias,
            y,
            mean,
            rstd,
            n_rows,
            n_cols,
            n_cols,
            n_cols,
            eps,
            BLOCK_N=block,
            config=config,
        )
    return y, mean, rstd


def backward(
    dy2d: torch.Tensor,
    x2d: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    config: dict | None = None,
    n_partials: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dx, dweight, dbias) of `forward`; dy2d and x2d are contiguous [rows, cols]."""
    n_rows, n_cols = x2d.shape
    block = _block(n_cols)
    dx = torch.empty_like(x2d)
    dw = torch.empty_like(weight)
    db = torch.empty_like(weight)
    if n_partials is None:
        n_partials = parallel_programs(x2d, per_sm=4, interpreted=3)
    n_partials = max(1, min(n_rows, n_partials))
    partial_dw = torch.empty((n_partials, n_cols), dtype=torch.float32, device=x2d.device)
    partial_db = torch.empty_like(partial_dw)
    with device_guard(x2d):
        launch(
            _layer_norm_bwd_dx_kernel,
            (n_partials,),
            x2d,
            weight,
            mean,
            rstd,
            dy2d,
            dx,
            partial_dw,
            partial_db,
            n_rows,
            n_cols,
            n_cols,
            n_cols,
            n_cols,
            BLOCK_N=block,
            config=config,
        )
        block_c = min(64, block)
        launch(
            _column_sum_kernel,
            (triton.cdiv(n_cols, block_c),),
            partial_dw,
            partial_db,
            dw,
            db,
            n_partials,
            n_cols,
            BLOCK_P=32,
            BLOCK_C=block_c,
            num_warps=4,
        )
    return dx, dw, db
