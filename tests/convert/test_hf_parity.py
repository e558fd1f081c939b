"""Numerical parity with Hugging Face `GPT2LMHeadModel` through the weight map in
megatron_zh.convert.hf_gpt2 (float32, dropout off, no hub: models built from configs)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config as HFGPT2Config
from transformers import GPT2LMHeadModel

from megatron_zh.convert.hf.names import (
    from_hf_config,
    from_hf_state_dict,
    to_hf_config,
    to_hf_state_dict,
    weight_names,
)
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.model import GPT2Config, GPT2Model

MAX_ABS_DIFF = 1e-4


def randomise_all_parameters(model: torch.nn.Module, seed: int) -> None:
    # Init leaves biases at 0 and norms at 1; random values make every entry of the map matter.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 2:
                p.copy_(0.05 * noise)
            elif name.endswith("weight"):  # the only 1-D weights are LayerNorm gains
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def build_pair(config: GPT2Config, seed: int = 0) -> tuple[GPT2Model, GPT2LMHeadModel]:
    torch.manual_seed(seed)
    ours = GPT2Model(config).eval()
    randomise_all_parameters(ours, seed)
    hf = GPT2LMHeadModel(to_hf_config(config)).eval()
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), config), strict=True)
    return ours, hf


def tokens(config: GPT2Config, batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset, impl", [("gpt2-tiny", "flash"), ("gpt2-tiny", "softmax"), ("gpt2-distil", "flash")])
def test_logits_and_loss_match_hugging_face(preset, impl):
    config = GPT2Config.from_preset(preset, attention_impl=impl)
    ours, hf = build_pair(config)
    batch = tokens(config, batch=2, seq=48)
    with torch.no_grad():
        # Megatron style: inputs tokens[:-1], labels tokens[1:]. HF shifts labels itself, so it
        # gets the full sequence and predicts the same len-1 positions.
        out = ours(batch[:, :-1], labels=batch[:, 1:], return_logits=True)
        fused_loss = ours(batch[:, :-1], labels=batch[:, 1:]).loss  # the fused head: no logits
        hf_out = hf(input_ids=batch, labels=batch)
        hf_logits = hf(input_ids=batch[:, :-1]).logits
    assert (out.logits - hf_logits).abs().max().item() <= MAX_ABS_DIFF
    assert abs(out.loss.item() - hf_out.loss.item()) <= MAX_ABS_DIFF
    assert abs(fused_loss.item() - hf_out.loss.item()) <= MAX_ABS_DIFF


def test_masked_loss_matches_hugging_face_ignore_index():
    config = GPT2Config.from_preset("gpt2-tiny")
    ours, hf = build_pair(config, seed=3)
    batch = tokens(config, batch=3, seq=40, seed=4)
    loss_mask = (torch.rand(3, 40, generator=torch.Generator().manual_seed(5)) > 0.3).float()
    hf_labels = batch.clone()
    hf_labels[:, 1:][loss_mask == 0] = -100
    with torch.no_grad():
        ours_loss = ours(batch[:, :-1], labels=batch[:, 1:], loss_mask=loss_mask).loss
        hf_loss = hf(input_ids=batch, labels=hf_labels).loss
    assert abs(ours_loss.item() - hf_loss.item()) <= MAX_ABS_DIFF


def test_hugging_face_weights_load_into_our_model():
    config = GPT2Config.from_preset("gpt2-tiny")
    torch.manual_seed(7)
    hf = GPT2LMHeadModel(to_hf_config(config)).eval()
    randomise_all_parameters(hf, 7)
    hf.tie_weights()
    ours = GPT2Model(from_hf_config(hf.config)).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), ours.config), strict=True)
    batch = tokens(config, batch=2, seq=30)
    with torch.no_grad():
        assert (ours(batch).logits - hf(input_ids=batch).logits).abs().max().item() <= MAX_ABS_DIFF


def test_state_dict_and_config_round_trip():
    config = GPT2Config.from_preset("gpt2-tiny", hidden_dropout=0.05, attention_dropout=0.0, layernorm_epsilon=1e-6)
    ours, _ = build_pair(config)
    hf_state = to_hf_state_dict(ours.state_dict(), config)
    assert hf_state["lm_head.weight"] is hf_state["transformer.wte.weight"]
    assert hf_state["transformer.h.0.attn.c_attn.weight"].shape == (128, 384)  # Conv1D: [in, out]
    assert all(t.is_contiguous() for t in hf_state.values())
    back = from_hf_state_dict(hf_state, config)
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[name], tensor) for name, tensor in ours.state_dict().items())
    assert from_hf_config(to_hf_config(config)) == config
    assert from_hf_config(to_hf_config(config).to_dict()) == config  # config.json contents work too
    hf_config = to_hf_config(config, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    assert (hf_config.bos_token_id, hf_config.eos_token_id, hf_config.pad_token_id) == (1, 2, 3)
    assert hf_config.activation_function == "gelu_new" and hf_config.tokenizer_class == "BertTokenizer"
    assert len(weight_names(config)) == 4 + 12 * config.num_layers


def test_gpt2model_keys_and_legacy_buffers_are_accepted():
    config = GPT2Config.from_preset("gpt2-tiny")
    ours, hf = build_pair(config)
    base = {name.removeprefix("transformer."): t for name, t in hf.state_dict().items() if name != "lm_head.weight"}
    base["h.0.attn.bias"] = torch.ones(1, 1, 4, 4)  # causal-mask buffer of older checkpoints
    converted = from_hf_state_dict(base, config)
    assert all(torch.equal(converted[name], t) for name, t in ours.state_dict().items())


def test_mismatches_are_clear_errors():
    config = GPT2Config.from_preset("gpt2-tiny")
    ours, hf = build_pair(config)
    state = ours.state_dict()
    with pytest.raises(CheckpointError, match="missing layers.1.mlp.dense_4h_to_h.bias"):
        to_hf_state_dict({k: v for k, v in state.items() if k != "layers.1.mlp.dense_4h_to_h.bias"}, config)
    with pytest.raises(CheckpointError, match="unexpected layers.1"):
        to_hf_state_dict(state, GPT2Config.from_preset("gpt2-tiny", num_layers=1))
    with pytest.raises(CheckpointError, match="missing transformer.h.2"):
        from_hf_state_dict(hf.state_dict(), GPT2Config.from_preset("gpt2-tiny", num_layers=3))
    with pytest.raises(CheckpointError, match="the config implies"):
        to_hf_state_dict(state, GPT2Config.from_preset("gpt2-tiny", ffn_hidden_size=256))
    untied = dict(hf.state_dict())
    untied["lm_head.weight"] = untied["lm_head.weight"] + 1
    with pytest.raises(CheckpointError, match="differs from its word embedding"):
        from_hf_state_dict(untied, config)
    with pytest.raises(ConfigError, match="activation_function 'relu'"):
        from_hf_config(HFGPT2Config(activation_function="relu"))
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        from_hf_config(HFGPT2Config(scale_attn_by_inverse_layer_idx=True))
