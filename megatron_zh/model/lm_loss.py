"""The tied LM head and its cross-entropy, chunk by chunk over tokens: the loss without the [tokens, vocab] logits.

With a 21,128-word vocabulary the logits are the largest activation of a small GPT-2: for 4 x 1024
tokens in fp32, `F.linear` then `F.cross_entropy` hold the logits (330 MiB), cross-entropy's saved
log-probabilities (330 MiB) and, in backward, their gradient (330 MiB). Here a chunk of tokens at a time
makes its logits, turns them into its loss and, when gradients are wanted, straight into the gradient of
the loss with respect to them, (softmax - one_hot) * weight, which is multiplied out at once into the
chunk's rows of grad_hidden and added into grad_weight. Only one chunk's [chunk, vocab] buffer is ever
alive. Forward thus does the three matmuls that forward and backward did before, and keeps grad_hidden
[N, H] and grad_weight [V, H] for backward, which only scales them by the incoming gradient (1, or a loss
scale). Under no_grad (evaluation) only the loss is computed, chunk by chunk.

Semantics are `gpt2.masked_lm_loss` of `F.linear(hidden, weight)`, exactly: the matmul runs in the inputs'
dtype (as F.linear does) and the softmax in float32 (float64 for float64 inputs); labels of -100 (
F.cross_entropy's ignore_index) score 0 but count in the mean; the loss is sum(ce * mask) / sum(mask)
(0, with zero gradients, when the mask is all 0), or the plain mean without a mask. The gradients are
divided by that denominator once, in float32 after the low-precision matmuls, and grad_weight is summed
over the chunks in float32 (a bf16 sum over chunks would lose digits to cancellation).
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100  # F.cross_entropy's default, which masked_lm_loss inherits


def default_chunk_tokens(num_tokens: int, hidden_size: int, vocab_size: int) -> int:
    """Tokens per chunk such that a chunk's [chunk, vocab] fp32 logits are about the size of the [N, hidden]
    hidden states: the head then costs about one more activation, however long the batch. A multiple of 64
    (whole matmul tiles), at least 64. Measured on CPU (gpt2-distil, 4 x 1024 tokens: 192), 128-256 is
    where the per-chunk overhead stops mattering."""
    per_chunk = -(-num_tokens * hidden_size // vocab_size)
    return max(64, -(-per_chunk // 64) * 64)


def lm_head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    *,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """masked_lm_loss(F.linear(hidden, weight), labels, loss_mask) without the logits (a float32 scalar).

    hidden [..., H] after the final LayerNorm, weight [V, H] (the tied word embedding), labels and
    loss_mask shaped like hidden without its last dim (loss_mask: 0/1 or fractional weights; None: the
    plain mean over all tokens)."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    if flat_labels.shape[0] != flat_hidden.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)} do not fit hidden states {tuple(hidden.shape)}")
    num_tokens, hidden_size = flat_hidden.shape
    accumulate = torch.promote_types(hidden.dtype, torch.float32)
    ignored = flat_labels == IGNORE_INDEX
    if loss_mask is None:
        token_weights = (~ignored).to(accumulate)
        denominator = torch.full((), num_tokens, dtype=accumulate, device=hidden.device)
    else:
        mask = loss_mask.reshape(-1).to(accumulate)
        token_weights = mask.masked_fill(ignored, 0.0)
        denominator = mask.sum().clamp_min(torch.finfo(accumulate).tiny)
    chunk = chunk_tokens or default_chunk_tokens(num_tokens, hidden_size, weight.shape[0])
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    # Out-of-range labels other than -100 still fail, in gather, as they do in F.cross_entropy.
    targets = flat_labels.masked_fill(ignored, 0)
    return _LinearCrossEntropy.apply(flat_hidden, weight, targets, token_weights, denominator, chunk, need_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        token_weights: torch.Tensor,
        denominator: torch.Tensor,
        chunk: int,
        need_grad: bool,
    ) -> torch.Tensor:
        accumulate = token_weights.dtype
        loss_sum = torch.zeros((), dtype=accumulate, device=hidden.device)
        grad_hidden = torch.empty(hidden.shape, dtype=accumulate, device=hidden.device) if need_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if need_grad else None
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            h, t, w = hidden[rows], targets[rows], token_weights[rows]
            logits = (h @ weight.T).to(accumulate)  # the one [chunk, vocab] buffer; reused in place below
            target_logits = logits.gather(1, t[:, None]).squeeze(1)
            row_max = logits.amax(dim=1, keepdim=True)
            exp = logits.sub_(row_max).exp_()
            row_sum = exp.sum(dim=1, keepdim=True)
            log_sum_exp = (row_max + row_sum.log()).squeeze(1)
            loss_sum += ((log_sum_exp - target_logits) * w).sum()
            if grad_hidden is None or grad_weight is None:
                continue
            # d ce / d logits = softmax - one_hot, times the token's weight (1 / denominator comes after the loop).
            grad_logits = exp.div_(row_sum)
            grad_logits.scatter_add_(1, t[:, None], grad_logits.new_full((t.shape[0], 1), -1.0))
            grad_logits.mul_(w[:, None])
            low = grad_logits.to(hidden.dtype)  # the matmuls run in the inputs' dtype, as autograd's would
            grad_hidden[rows] = low @ weight
            if low.is_cuda and low.dtype != accumulate:
                # bf16/fp16 GEMM with a float32 result, summed in float32 (not yet run on a GPU here).
                grad_weight += torch.mm(low.T, h, out_dtype=accumulate)
            else:  # CPU has no low-precision GEMM with a float32 result: a float32 GEMM
                grad_weight.addmm_(grad_logits.T, h.to(accumulate))
        if grad_hidden is not None and grad_weight is not None:
            ctx.grads = (grad_hidden.div_(denominator), grad_weight.div_(denominator))
        else:
            ctx.grads = None
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss_sum / denominator

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.grads is None:
            raise RuntimeError(
                "lm_head_loss: backward ran twice (its saved gradients are scaled in place), "
                "or forward ran without gradients"
            )
        (grad_hidden, grad_weight), ctx.grads = ctx.grads, None
        hidden_dtype, weight_dtype = ctx.dtypes
        # In place: no second [V, H] at the peak of backward.
        grad_hidden = grad_hidden.mul_(grad_loss).to(hidden_dtype)
        grad_weight = grad_weight.mul_(grad_loss).to(weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None
