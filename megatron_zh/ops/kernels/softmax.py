"""Fused scale + causal mask + softmax over the last dimension, forward and backward.

Each program owns ROWS whole rows of the [rows, cols] score matrix, so a row is read once and
written once; only the causal (lower-triangle) part is read, and accumulation is in float32.
Row r of the flattened matrix is query position r % seq_q, and column c is kept when c <= that
position (top-left aligned, like `torch.tril` and SDPA's `is_causal`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from megatron_zh.ops.kernels.common import device_guard, launch, tuning_configs

MAX_COLS = 16384  # one row must fit a program's registers
LOG2E = 1.4426950408889634

_GPU_CONFIGS = [triton.Config({"ROWS": rows}, num_warps=warps) for rows in (1, 2, 4, 8, 16) for warps in (4, 8, 16)]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    block = kwargs["BLOCK_COLS"]

    def fits(config: triton.Config) -> bool:
        tile = config.kwargs["ROWS"] * block
        return tile <= MAX_COLS and 32 * config.num_warps <= tile and (tile >= 1024 or config.kwargs["ROWS"] == 16)

    kept = [c for c in configs if fits(c)]
    return kept or [min(configs, key=lambda c: (-c.kwargs["ROWS"], c.num_warps))]


_autotune = triton.autotune(
    configs=tuning_configs(_GPU_CONFIGS, triton.Config({"ROWS": 4}, num_warps=4)),
    key=["n_cols"],
    prune_configs_by={"early_config_prune": _prune},
)


@triton.jit
def _row_tile(pid, n_rows, seq_q, n_cols, ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_COLS)
    in_bounds = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    # Every row keeps column 0, so no row is all -inf (padding rows included: no NaN anywhere).
    causal = (cols[None, :] <= (rows % seq_q)[:, None]) & (cols[None, :] < n_cols)
    return rows.to(tl.int64), cols, in_bounds, causal


@_autotune
@triton.jit
def _softmax_fwd_kernel(
    x_ptr,
    y_ptr,
    n_rows,
    seq_q,
    n_cols,
    stride_x,
    stride_y,
    scale_log2e,
    ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    rows, cols, in_bounds, causal = _row_tile(tl.program_id(0), n_rows, seq_q, n_cols, ROWS, BLOCK_COLS)
    # Loaded values go to float32 at once: accuracy, and the interpreter has no bf16 arithmetic.
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=in_bounds & causal, other=0.0).to(tl.float32)
    logits = tl.where(causal, x * scale_log2e, float("-inf"))
    shifted = logits - tl.max(logits, axis=1)[:, None]
    numerator = tl.exp2(shifted)
    y = numerator / tl.sum(numerator, axis=1)[:, None]
    tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=in_bounds)


@_autotune
@triton.jit
def _softmax_bwd_kernel(
    y_ptr,
    dy_ptr,
    dx_ptr,
    n_rows,
    seq_q,
    n_cols,
    stride_y,
    stride_dy,
    stride_dx,
    scale,
    ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    rows, cols, in_bounds, causal = _row_tile(tl.program_id(0), n_rows, seq_q, n_cols, ROWS, BLOCK_COLS)
    load_mask = in_bounds & causal
    y = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=load_mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + rows[:, None] * stride_dy + cols[None, :], mask=load_mask, other=0.0).to(tl.float32)
    # d softmax(s)/ds: y * (dy - <dy, y>), then the chain rule through s = scale * x.
    dx = scale * y * (dy - tl.sum(dy * y, axis=1)[:, None])
    tl.store(dx_ptr + rows[:, None] * stride_dx + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=in_bounds)


def _launch_args(x: torch.Tensor) -> tuple[int, int, int, int]:
    seq_q, n_cols = x.shape[-2], x.shape[-1]
    if n_cols > MAX_COLS:
        raise ValueError(
            f"scaled_causal_softmax: the Triton kernel handles rows of at most {MAX_COLS} "
            f"columns, got {n_cols}; use backend='torch' for longer rows"
        )
    return (x.numel() // n_cols if n_cols else 0), seq_q, n_cols, triton.next_power_of_2(n_cols)


def _rowwise(kernel, inputs: list[torch.Tensor], scale: float, config: dict | None) -> torch.Tensor:
    """Launch a row kernel taking (inputs..., out, n_rows, seq_q, n_cols, row strides..., scale)."""
    n_rows, seq_q, n_cols, block = _launch_args(inputs[0])
    out = torch.empty_like(inputs[0])
    if n_rows:

        def grid(meta: dict) -> tuple[int, ...]:
            return (triton.cdiv(n_rows, meta["ROWS"]),)

        with device_guard(out):
            launch(
                kernel,
                grid,
                *inputs,
                out,
                n_rows,
                seq_q,
                n_cols,
                *[n_cols] * (len(inputs) + 1),
                scale,
                BLOCK_COLS=block,
                config=config,
            )
    return out


def forward(x: torch.Tensor, scale: float, config: dict | None = None) -> torch.Tensor:
    """softmax(scale * x) with the upper triangle masked; x is contiguous, [..., seq_q, seq_k]."""
    return _rowwise(_softmax_fwd_kernel, [x], scale * LOG2E, config)


def backward(y: torch.Tensor, dy: torch.Tensor, scale: float, config: dict | None = None) -> torch.Tensor:
    """Gradient of `forward` with respect to x, from its output y; y and dy are contiguous."""
    return _rowwise(_softmax_bwd_kernel, [y, dy], scale, config)
