"""The fused chunked LM head + cross-entropy: the same loss and gradients as the logits path, in float32 and bf16,
checked against float64; the mask, ignore_index and the model's API around it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_zh.model import GPT2Config, GPT2Model, lm_head_loss, masked_lm_loss
from megatron_zh.model.lm_loss import default_chunk_tokens


def inputs(tokens: int = 96, hidden: int = 32, vocab: int = 300, dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=gen).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen) * 0.5).to(dtype)
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    return h, w, labels


def masks(tokens: int) -> dict[str, torch.Tensor | None]:
    binary = torch.ones(tokens)
    binary[10:40] = 0  # whole chunks of 7 and of 16 masked out
    binary[::5] = 0
    return {
        "none": None,
        "binary": binary,
        "fractional": torch.rand(tokens, generator=torch.Generator().manual_seed(3)),
        "all zero": torch.zeros(tokens),
    }


def loss_and_grads(fn, h, w, labels, mask, scale: float = 1.0):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fn(h, w, labels, mask)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


def logits_path(h, w, labels, mask):
    return masked_lm_loss(F.linear(h, w), labels, mask)


def float64_path(h, w, labels, mask):
    """The masked mean cross-entropy in float64 throughout (masked_lm_loss itself works in float32)."""
    losses = F.cross_entropy(F.linear(h.double(), w.double()), labels, reduction="none")
    if mask is None:
        return losses.mean()
    mask = mask.double()
    return (losses * mask).sum() / mask.sum().clamp_min(torch.finfo(torch.float64).tiny)


def no_worse(mine: torch.Tensor, today: torch.Tensor, exact: torch.Tensor, ulps: float) -> bool:
    """mine is no further from float64 than today's result is, give or take `ulps` of mine's dtype."""
    error, error_today = ((t.double() - exact).abs().max().item() for t in (mine, today))
    return error <= 1.25 * error_today + ulps * torch.finfo(mine.dtype).eps * exact.abs().max().item()


def fused(chunk):
    return lambda h, w, labels, mask: lm_head_loss(h, w, labels, mask, chunk_tokens=chunk)


@pytest.mark.parametrize("mask_name", ["none", "binary", "fractional", "all zero"])
@pytest.mark.parametrize("chunk", [7, 16, 1000])
def test_fp32_loss_and_gradients_match_the_logits_path_and_float64(mask_name, chunk):
    h, w, labels = inputs()
    mask = masks(h.shape[0])[mask_name]
    got = loss_and_grads(fused(chunk), h, w, labels, mask)
    today = loss_and_grads(logits_path, h, w, labels, mask)
    exact = loss_and_grads(float64_path, h, w, labels, mask)
    for mine, theirs, ref in zip(got, today, exact):
        assert mine.dtype == theirs.dtype
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
        assert no_worse(mine, theirs, ref, ulps=2)
    if mask_name == "all zero":
        assert got[0].item() == 0.0 and not got[1].any() and not got[2].any()


def test_bf16_is_no_worse_than_the_logits_path():
    h, w, labels = inputs(tokens=128, hidden=64, vocab=500, dtype=torch.bfloat16)
    mask = masks(128)["binary"]
    got = loss_and_grads(fused(32), h, w, labels, mask)
    today = loss_and_grads(logits_path, h, w, labels, mask)
    exact = loss_and_grads(float64_path, h, w, labels, mask)
    assert got[1].dtype == got[2].dtype == torch.bfloat16 and got[0].dtype == torch.float32
    for mine, theirs, ref in zip(got, today, exact):
        assert no_worse(mine, theirs, ref, ulps=0.25)


def test_a_scaled_loss_scales_the_gradients_and_a_second_backward_is_refused():
    h, w, labels = inputs()
    _, grad_h, grad_w = loss_and_grads(fused(16), h, w, labels, None, scale=1024.0)
    _, ref_h, ref_w = loss_and_grads(logits_path, h, w, labels, None, scale=1024.0)
    torch.testing.assert_close(grad_h, ref_h, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad_w, ref_w, rtol=1e-5, atol=1e-4)
    h = h.clone().requires_grad_()
    loss = lm_head_loss(h, w, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_ignore_index_scores_zero_and_counts_in_the_mean_as_cross_entropy_does():
    h, w, labels = inputs()
    labels[::3] = -100
    for mask in (None, torch.ones(labels.shape)):
        got = loss_and_grads(fused(16), h, w, labels, mask)
        today = loss_and_grads(logits_path, h, w, labels, mask)
        for mine, theirs in zip(got, today):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_without_gradients_only_the_loss_is_computed():
    h, w, labels = inputs()
    with torch.no_grad():
        loss = lm_head_loss(h.requires_grad_(), w, labels, chunk_tokens=16)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, logits_path(h.detach(), w, labels, None))


def test_labels_outside_the_vocab_still_fail():
    h, w, labels = inputs()
    labels[5] = w.shape[0]
    with pytest.raises((IndexError, RuntimeError)):
        lm_head_loss(h, w, labels)
    with pytest.raises(ValueError, match="do not fit"):
        lm_head_loss(h, w, labels[:-1])


def test_default_chunk_keeps_a_chunk_of_logits_about_the_size_of_the_hidden_states():
    assert default_chunk_tokens(4 * 1024, 768, 21128) == 192  # gpt2-distil, 4 x 1024 tokens
    assert default_chunk_tokens(16 * 1024, 768, 21128) == 640
    assert default_chunk_tokens(10, 768, 21128) == 64
    for tokens in (1000, 4096, 65536):
        chunk = default_chunk_tokens(tokens, 768, 21128)
        assert chunk % 64 == 0 and chunk * 21128 >= tokens * 768 > (chunk - 64) * 21128


def test_full_vocab_head():
    """gpt2-distil's head (768 x 21128) on a short batch, chunked unevenly."""
    h, w, labels = inputs(tokens=200, hidden=768, vocab=21128)
    w = w * 0.05
    got = loss_and_grads(fused(64), h, w, labels, None)
    today = loss_and_grads(logits_path, h, w, labels, None)
    for mine, theirs in zip(got, today):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_model_gradients_are_the_logits_paths_with_the_tied_embedding(dropout):
    config = GPT2Config.from_preset("gpt2-tiny", vocab_size=400, hidden_dropout=dropout, attention_dropout=dropout)
    torch.manual_seed(0)
    fused_model = GPT2Model(config).train()
    logits_model = GPT2Model(config, lm_loss="logits").train()
    logits_model.load_state_dict(fused_model.state_dict())
    gen = torch.Generator().manual_seed(1)
    ids, labels = torch.randint(0, 400, (3, 40), generator=gen), torch.randint(0, 400, (3, 40), generator=gen)
    mask = (torch.rand(3, 40, generator=gen) > 0.2).float()
    results = []
    for model in (fused_model, logits_model):
        torch.manual_seed(7)  # the same dropout masks
        out = model(ids, labels=labels, loss_mask=mask)
        out.loss.backward()
        results.append((out, {name: p.grad for name, p in model.named_parameters()}))
    (fused_out, fused_grads), (logits_out, logits_grads) = results
    assert fused_out.logits is None and logits_out.logits is not None  # "logits" keeps today's output
    torch.testing.assert_close(fused_out.loss, logits_out.loss, rtol=1e-6, atol=1e-6)
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, logits_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_model_api_gives_logits_where_asked():
    config = GPT2Config.from_preset("gpt2-tiny", vocab_size=400)
    model = GPT2Model(config).eval()
    ids = torch.randint(0, 400, (2, 10))
    assert model(ids).logits.shape == (2, 10, 400)  # generation, export self-check
    both = model(ids, labels=ids, return_logits=True)
    assert both.logits is not None and both.loss is not None
    assert model(ids, labels=ids).logits is None
    with pytest.raises(ValueError, match="asks for nothing"):
        model(ids, return_logits=False)
    with pytest.raises(ValueError, match="lm_loss"):
        GPT2Model(config, lm_loss="chunked")
