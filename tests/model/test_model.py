"""GPT2Config and GPT2Model: validation, shapes, loss masking, init, tied head, checkpointing,
attention implementations and kernel backends."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megatron_zh.errors import ConfigError
from megatron_zh.model import PRESETS, GPT2Config, GPT2Model, KVCache, model_flops_per_token


def small_config(**overrides) -> GPT2Config:
    fields = dict(
        vocab_size=500,
        max_position_embeddings=64,
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        ffn_hidden_size=256,
    )
    return GPT2Config(**{**fields, **overrides})


def random_batch(config: GPT2Config, batch: int = 2, seq: int = 24, seed: int = 0):
    tokens = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


# --- config -------------------------------------------------------------------------------------


def test_defaults_are_the_published_distil_model():
    config = GPT2Config()
    assert config == GPT2Config.from_preset("gpt2-distil")
    assert (
        config.vocab_size,
        config.max_position_embeddings,
        config.num_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.ffn_hidden_size,
    ) == (21128, 1024, 6, 768, 12, 3072)
    assert config.hidden_dropout == config.attention_dropout == 0.1
    assert config.head_dim == 64


def test_presets_build_and_round_trip_through_dicts():
    for name in PRESETS:
        config = GPT2Config.from_preset(name)
        assert GPT2Config.from_dict(config.to_dict()) == config
    tiny = GPT2Config.from_preset("gpt2-tiny", attention_impl="torch")
    assert (tiny.num_layers, tiny.hidden_size, tiny.attention_impl) == (2, 128, "torch")


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(hidden_size=100, num_attention_heads=12), "divisible by num_attention_heads"),
        (dict(num_layers=0), "num_layers must be a positive integer"),
        (dict(vocab_size=True), "vocab_size must be a positive integer"),
        (dict(hidden_dropout=1.0), r"hidden_dropout must be in \[0, 1\)"),
        (dict(attention_dropout=-0.1), "attention_dropout"),
        (dict(layernorm_epsilon=0.0), "layernorm_epsilon must be a positive number"),
        (dict(init_std=float("nan")), "init_std"),
        (dict(attention_impl="xformers"), "attention_impl must be one of"),
        (dict(activation_checkpointing="yes"), "activation_checkpointing"),
    ],
)
def test_invalid_configs_are_rejected(fields, message):
    with pytest.raises(ConfigError, match=message):
        GPT2Config(**fields)


def test_unknown_preset_and_keys_are_rejected():
    with pytest.raises(ConfigError, match="unknown model preset 'gpt3'.*gpt2-distil"):
        GPT2Config.from_preset("gpt3")
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\) \['n_embd'\]"):
        GPT2Config.from_dict({"n_embd": 768})


def test_model_flops_per_token():
    config = GPT2Config()
    h, layers, vocab, seq = 768, 6, 21128, 1024
    # Megatron-LM's formula (f = 4h): 72 * L * h^2 * (1 + s / 6h + V / 12hL) per token.
    megatron = 72 * layers * h**2 * (1 + seq / (6 * h) + vocab / (12 * h * layers))
    assert model_flops_per_token(config, seq) == pytest.approx(megatron, rel=1e-12)
    # Independent count: 6 FLOPs per matmul weight per token, plus attention's 2 * 2 * s * h
    # per layer in the forward (tripled for training).
    model = GPT2Model(small_config())
    matmul_weights = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "position" not in name)
    expected = 6 * matmul_weights + 3 * 4 * 32 * 64 * 2
    assert model_flops_per_token(small_config(), 32) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ConfigError):
        model_flops_per_token(config, 0)


# --- model --------------------------------------------------------------------------------------


def test_logits_shape_and_unmasked_loss():
    config = small_config()
    model = GPT2Model(config).eval()
    input_ids, labels = random_batch(config)
    out = model(input_ids, labels=labels, return_logits=True)
    assert out.logits.shape == (2, 24, config.vocab_size)
    expected = F.cross_entropy(out.logits.reshape(-1, config.vocab_size), labels.reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert model(input_ids).loss is None
    fused = model(input_ids, labels=labels)  # the loss alone: the fused head, no logits
    assert fused.logits is None
    torch.testing.assert_close(fused.loss, expected)


def test_loss_mask_excludes_positions():
    config = small_config()
    model = GPT2Model(config).eval()
    input_ids, labels = random_batch(config)
    mask = torch.ones(labels.shape)
    mask[0, 5:] = 0
    mask[1, :3] = 0
    loss = model(input_ids, labels=labels, loss_mask=mask).loss
    logits = model(input_ids).logits
    per_token = F.cross_entropy(logits.reshape(-1, config.vocab_size), labels.reshape(-1), reduction="none")
    torch.testing.assert_close(loss, per_token[mask.reshape(-1) > 0].mean())
    # Labels under the mask do not matter.
    other = labels.clone()
    other[mask == 0] = (other[mask == 0] + 1) % config.vocab_size
    torch.testing.assert_close(model(input_ids, labels=other, loss_mask=mask).loss, loss)
    # An all-zero mask gives a zero loss and zero (not NaN) gradients.
    empty = GPT2Model(config).train()
    loss = empty(input_ids, labels=labels, loss_mask=torch.zeros(labels.shape)).loss
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in empty.parameters())


def test_initialisation_statistics():
    config = GPT2Config()  # full size: statistics over millions of weights
    torch.manual_seed(0)
    model = GPT2Model(config)
    residual_std = 0.02 / math.sqrt(2 * config.num_layers)
    for name, p in model.named_parameters():
        if name.endswith("layernorm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            expected = residual_std if name.endswith(("self_attention.dense.weight", "dense_4h_to_h.weight")) else 0.02
            assert abs(p.mean().item()) < 3 * expected / math.sqrt(p.numel()) + 1e-7, name
            assert p.std().item() == pytest.approx(expected, rel=0.02), name


def test_lm_head_is_tied_to_the_word_embedding():
    config = small_config()
    model = GPT2Model(config).train()
    assert not any("lm_head" in name for name in model.state_dict())
    input_ids, labels = random_batch(config)
    out = model(input_ids, labels=labels)
    out.loss.backward()
    word = model.embedding.word_embeddings.weight
    # Rows of tokens never fed in still get gradient: it can only come through the LM head.
    unused = torch.ones(config.vocab_size, dtype=torch.bool)
    unused[input_ids.unique()] = False
    assert word.grad[unused].abs().sum() > 0
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_activation_checkpointing_gives_identical_gradients():
    config = small_config(hidden_dropout=0.1, attention_dropout=0.1)
    input_ids, labels = random_batch(config)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = GPT2Model(
            small_config(hidden_dropout=0.1, attention_dropout=0.1, activation_checkpointing=checkpointing)
        ).train()
        calls = []
        model.layers[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        torch.manual_seed(1)  # the same dropout masks in both runs (and in the recompute)
        loss = model(input_ids, labels=labels).loss
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)  # recomputed in the backward
        results.append((loss.detach(), grads_of(model)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("impl", ["flash", "softmax"])
def test_attention_impls_agree(impl):
    input_ids, labels = random_batch(small_config())
    results = {}
    for name in ("torch", impl):
        torch.manual_seed(0)
        model = GPT2Model(small_config(attention_impl=name, hidden_dropout=0.0, attention_dropout=0.0))
        loss = model(input_ids, labels=labels).loss
        loss.backward()
        results[name] = (loss.detach(), grads_of(model))
    torch.testing.assert_close(results[impl][0], results["torch"][0], atol=1e-6, rtol=1e-6)
    for name, grad in results["torch"][1].items():
        torch.testing.assert_close(results[impl][1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("impl", ["flash", "softmax"])
def test_triton_kernels_in_the_model_match_pytorch(impl):
    # kernel_backend="triton" runs the fused layer norm and attention kernels (here under
    # Triton's interpreter); they must reproduce the PyTorch path. 150 tokens span query blocks that
    # have key blocks wholly below the diagonal (unmasked), straddling it, and past it (skipped).
    config = small_config(attention_impl=impl, hidden_dropout=0.0, attention_dropout=0.0, max_position_embeddings=160)
    input_ids, labels = random_batch(config, batch=2, seq=150)
    results = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        model = GPT2Model(config, kernel_backend=backend)
        loss = model(input_ids, labels=labels).loss
        loss.backward()
        results[backend] = (loss.detach(), grads_of(model))
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-6, rtol=1e-6)
    for name, grad in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_dropout_only_in_training():
    config = small_config(hidden_dropout=0.2, attention_dropout=0.2)
    model = GPT2Model(config)
    input_ids, _ = random_batch(config)
    model.eval()
    assert torch.equal(model(input_ids).logits, model(input_ids).logits)
    model.train()
    assert not torch.equal(model(input_ids).logits, model(input_ids).logits)


@torch.no_grad()
def test_forward_with_a_kv_cache_matches_the_full_forward():
    """Feeding a sequence in pieces through a KVCache gives the logits of one full forward, and
    last_only gives the last of them."""
    config = small_config()
    model = GPT2Model(config).eval()
    input_ids, labels = random_batch(config, batch=2, seq=20)
    full = model(input_ids).logits
    torch.testing.assert_close(model(input_ids, last_only=True).logits, full[:, -1:], atol=1e-6, rtol=1e-5)
    cache = KVCache.allocate(config, rows=2, capacity=24, dtype=torch.float32, device="cpu")
    pieces = []
    for start, end in ((0, 12), (12, 13), (13, 20)):
        positions = torch.arange(start, end).expand(2, -1)
        pieces.append(model(input_ids[:, start:end], positions=positions, cache=cache).logits)
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="holds 24 columns"):
        model(input_ids[:, :5], positions=torch.arange(20, 25).expand(2, -1), cache=cache)
    with pytest.raises(ValueError, match="last_only"):
        model(input_ids, labels=labels, last_only=True)


def test_auto_resolves_by_device_and_a_kernel_choice_sets_each_op(monkeypatch):
    """Auto means the Triton kernels on CUDA tensors and PyTorch code elsewhere, also under the interpreter
    (a run asks for interpreted kernels through --kernels); a KernelChoice sets each op on its own."""
    from megatron_zh.ops import KernelChoice
    from megatron_zh.ops.kernels import attention, layer_norm

    config = small_config(hidden_dropout=0.0, attention_dropout=0.0)
    model = GPT2Model(config)
    assert model.kernels_for(torch.device("cpu")) == KernelChoice.uniform("torch")
    assert model.kernels_for(torch.device("cuda")) == KernelChoice.uniform("triton")
    mixed = KernelChoice(layer_norm="triton", causal_attention="torch", scaled_causal_softmax="auto")
    torch.manual_seed(0)
    model = GPT2Model(config, kernel_backend=mixed)
    assert model.kernels_for(torch.device("cpu")) == KernelChoice("triton", "torch", "torch")
    launches = {"layer_norm": 0, "attention": 0}

    def counting(module, name):
        real = module.forward

        def launcher(*args, **kwargs):
            launches[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, "forward", launcher)

    counting(layer_norm, "layer_norm")
    counting(attention, "attention")
    input_ids, labels = random_batch(config)
    loss = model(input_ids, labels=labels).loss
    torch.manual_seed(0)
    reference = GPT2Model(config, kernel_backend="torch")(input_ids, labels=labels).loss
    assert launches == {"layer_norm": 2 * config.num_layers + 1, "attention": 0}
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)


def test_bad_inputs_are_rejected():
    config = small_config()
    model = GPT2Model(config)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        model(torch.zeros(65, dtype=torch.long))
    with pytest.raises(ValueError, match="kernel_backend"):
        GPT2Model(config, kernel_backend="cuda")
