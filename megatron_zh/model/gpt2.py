"""GPT-2 language model: pre-LayerNorm blocks, a final LayerNorm, a tied LM head.

Numerics follow Hugging Face `GPT2LMHeadModel` (activation "gelu_new" = GELU's tanh form) so
weights move across unchanged through `megatron_zh.convert.hf_gpt2`. Parameter names follow
Megatron-LM (`query_key_value`, `dense_h_to_4h`, ...); the fused QKV projection's output is
[all query heads | all key heads | all value heads], as in GPT-2's `c_attn`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron_zh import ops
from megatron_zh.model.config import LM_LOSSES, GPT2Config, LMLoss
from megatron_zh.model.kv_cache import KVCache
from megatron_zh.model.lm_loss import lm_head_loss

KernelBackend = Literal["auto", "triton", "torch"]
KernelChoice = ops.KernelChoice
# A decoding pass is a few tokens per row, too short for the fused kernels to pay off.
DECODING_KERNELS = KernelChoice.uniform("torch")


class GPT2Output(NamedTuple):
    logits: torch.Tensor | None  # [batch, seq, vocab] (seq 1 with last_only), the model's dtype; None: loss only
    loss: torch.Tensor | None  # float32 scalar when labels were given


class LayerNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor, kernels: KernelChoice) -> torch.Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps, backend=kernels.layer_norm)


class SelfAttention(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.impl = config.attention_impl
        self.dropout_p = config.attention_dropout
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, x: torch.Tensor, kernels: KernelChoice, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        batch, seq, hidden = x.shape
        # [b, s, 3, heads, d] -> three strided [b, heads, s, d] views: no copies on the way in.
        qkv = self.query_key_value(x).view(batch, seq, 3, self.num_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=2))
        dropout_p = self.dropout_p if self.training else 0.0
        if cache is not None:
            # Decoding: the queries are the newest tokens, the keys every filled column, and the
            # mask (causal, minus left padding) is no longer a plain triangle: the fused causal
            # kernels do not apply.
            keys, values = cache.update(layer, k, v)
            context = F.scaled_dot_product_attention(q, keys, values, attn_mask=cache.mask)
        elif self.impl == "flash":
            context = ops.causal_attention(q, k, v, dropout_p=dropout_p, backend=kernels.causal_attention)
        elif self.impl == "softmax":
            scores = torch.matmul(q, k.transpose(-1, -2))
            scale = 1.0 / math.sqrt(self.head_dim)
            probs = ops.scaled_causal_softmax(scores, scale, backend=kernels.scaled_causal_softmax)
            context = torch.matmul(F.dropout(probs, dropout_p, self.training), v)
        else:
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        return self.dense(context.transpose(1, 2).reshape(batch, seq, hidden))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.ffn_hidden_size)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))


class TransformerBlock(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)): GPT-2's pre-LayerNorm block."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon)
        self.self_attention = SelfAttention(config)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon)
        self.mlp = MLP(config)
        self.hidden_dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self, x: torch.Tensor, kernels: KernelChoice, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.hidden_dropout(self.self_attention(self.input_layernorm(x, kernels), kernels, cache, layer))
        return x + self.hidden_dropout(self.mlp(self.post_attention_layernorm(x, kernels)))


class Embedding(nn.Module):
    """Word + learned position embeddings, then dropout (no embedding LayerNorm in GPT-2)."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.dropout(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class GPT2Model(nn.Module):
    """GPT-2 with its LM head tied to the word embedding.

    kernel_backend: one backend for every fused op, or a `KernelChoice` (one per op: what
    `ops.select_kernels` returns for a run after the kernel self-check). "auto" runs the Triton
    kernels on CUDA tensors and PyTorch code elsewhere; "triton" forces the kernels (on CPU only
    under TRITON_INTERPRET=1); "torch" forces PyTorch code. The choice is fixed at construction
    and only read by forward, so torch.compile guards on it instead of tracing a decision.

    lm_loss: "fused" (default) computes a loss asked for alone chunk by chunk, never holding the
    [batch, seq, vocab] logits (lm_loss.py); "logits" makes the logits and takes their cross-entropy.
    """

    def __init__(
        self,
        config: GPT2Config,
        *,
        kernel_backend: KernelBackend | KernelChoice = "auto",
        lm_loss: LMLoss = "fused",
    ):
        super().__init__()
        if isinstance(kernel_backend, str):
            if kernel_backend not in ops.dispatch.BACKENDS:
                raise ValueError(f"kernel_backend must be one of {ops.dispatch.BACKENDS}, got {kernel_backend!r}")
            kernel_backend = KernelChoice.uniform(kernel_backend)
        if lm_loss not in LM_LOSSES:
            raise ValueError(f"lm_loss must be one of {LM_LOSSES}, got {lm_loss!r}")
        self.config = config
        self.kernels: KernelChoice = kernel_backend
        self.lm_loss = lm_loss
        # "auto" entries, resolved once for each kind of input: CUDA tensors or not.
        on_cuda = kernel_backend.with_auto_as("triton" if ops.triton_installed() else "torch")
        self._kernels_by_device = {True: on_cuda, False: kernel_backend.with_auto_as("torch")}
        self.embedding = Embedding(config)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.final_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std) weights, zero biases, and the two residual output
        projections of every block at init_std / sqrt(2 * num_layers)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        for module in self.modules():  # in layer order, attention before MLP: the same draws as ever
            if isinstance(module, SelfAttention):
                nn.init.normal_(module.dense.weight, mean=0.0, std=residual_std)
            elif isinstance(module, MLP):
                nn.init.normal_(module.dense_4h_to_h.weight, mean=0.0, std=residual_std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied LM head is counted once

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        return_logits: bool | None = None,
    ) -> GPT2Output:
        """input_ids [batch, seq] -> logits [batch, seq, vocab]; with labels (already shifted:
        labels[:, i] is the token after input_ids[:, i]) the loss sum(ce * loss_mask) / sum(loss_mask),
        or the plain mean without a mask.

        return_logits: None (default) returns the logits when no labels are given, and the loss alone
        (logits None) when they are, which the fused head computes without the logits; True returns both
        (the loss then from the logits); False without labels is an error.

        For decoding: `positions` [batch, seq] (default 0..seq-1) places the tokens, `cache`
        supplies the keys and values of earlier passes and keeps this pass's, and `last_only`
        computes the logits of the last position only ([batch, 1, vocab]).
        """
        if return_logits is None:
            return_logits = labels is None or self.lm_loss == "logits"
        if labels is None and not return_logits:
            raise ValueError("return_logits=False without labels asks for nothing")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        if last_only and labels is not None:
            raise ValueError("the loss needs the logits of every position: pass labels without last_only")
        kernels = DECODING_KERNELS if cache is not None else self.kernels_for(input_ids.device)
        hidden = self.embedding(input_ids, positions)
        recompute = self.config.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        if cache is not None:
            cache.begin(input_ids.shape[1])
        for index, layer in enumerate(self.layers):
            if recompute:
                hidden = checkpoint(layer, hidden, kernels, use_reentrant=False)
            else:
                hidden = layer(hidden, kernels, cache, index)
        if cache is not None:
            cache.end(input_ids.shape[1])
        if last_only:
            hidden = hidden[:, -1:]
        hidden = self.final_layernorm(hidden, kernels)
        head = self.embedding.word_embeddings.weight  # tied
        if not return_logits:
            assert labels is not None  # checked above; for mypy
            return GPT2Output(None, lm_head_loss(hidden, head, labels, loss_mask))
        logits = F.linear(hidden, head)
        loss = None if labels is None else masked_lm_loss(logits, labels, loss_mask)
        return GPT2Output(logits, loss)

    def kernels_for(self, device: torch.device) -> KernelChoice:
        """The backend every fused op runs for inputs on `device` (no "auto" left)."""
        return self._kernels_by_device[device.type == "cuda"]


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean token cross-entropy in float32, weighted by loss_mask when given (0 if it is all 0)."""
    losses = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    if loss_mask is None:
        return losses.mean()
    mask = loss_mask.reshape(-1).to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp_min(torch.finfo(losses.dtype).tiny)


def model_from_state_dict(config: GPT2Config, state_dict: dict[str, torch.Tensor]) -> GPT2Model:
    """GPT2Model(config) holding exactly `state_dict` (strict), float32, in eval mode."""
    model = GPT2Model(config)
    model.load_state_dict(state_dict, strict=True)
    return model.float().eval()
