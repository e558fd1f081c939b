"""UER-py interop: import and export of UER-py GPT-2 model files, and the UER-py recipe configs.

The reference for UER-py's numerics is `uer_logits` below: a small re-implementation of UER-py's
pre-LN GPT-2 forward (word + position embedding, no embedding LayerNorm; pre-LN blocks with separate
Q/K/V linears, additive -10000 causal mask, gelu_fast; final LayerNorm; tied head) with UER-py's
LayerNorm `gamma * (x - mean) / (std_unbiased + 1e-6) + beta`, written from UER-py's documented
layer definitions.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_convert import run_tool
from training_runs import LR0_FIRST_STEP, REPO_ROOT, finetune_args, pretrain_args, run

from megatron_zh.checkpoint.weights import load_checkpoint_weights
from megatron_zh.convert.formats import export_checkpoint, import_model
from megatron_zh.convert.loading import load_model
from megatron_zh.convert.uer.importer import read_uer_config
from megatron_zh.convert.uer.names import (
    UER_LM_HEAD,
    UER_WORD_EMBEDDINGS,
    config_from_uer,
    expected_shapes,
    to_uer_config,
)
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.model import GPT2Config
from megatron_zh.model.gpt2 import model_from_state_dict
from megatron_zh.text.tokenizer import BertChineseTokenizer
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.metrics import read_metrics

TINY = GPT2Config.from_preset("gpt2-tiny")  # the CPU preset: 2 layers, hidden 128, 4 heads, 256 positions


def uer_layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, standard: bool) -> torch.Tensor:
    if standard:  # what ours and Hugging Face compute, for the control measurement
        return F.layer_norm(x, x.shape[-1:], gamma, beta, eps=1e-5)
    return gamma * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6) + beta


def uer_logits(uer: dict[str, torch.Tensor], heads: int, ids: torch.Tensor, standard_ln: bool = False) -> torch.Tensor:
    """UER-py's GPT-2 forward (eval mode) on `ids` [batch, seq] straight from its state dict."""
    batch, seq = ids.shape

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, uer[f"{name}.weight"], uer[f"{name}.bias"])

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return uer_layer_norm(x, uer[f"{name}.gamma"], uer[f"{name}.beta"], standard_ln)

    hidden = uer[UER_WORD_EMBEDDINGS][ids] + uer["embedding.pos.embedding.weight"][torch.arange(seq)]
    mask = (1.0 - torch.ones(seq, seq).tril()) * -10000.0
    layers = len({k.split(".")[2] for k in uer if k.startswith("encoder.transformer.")})
    for i in range(layers):
        p = f"encoder.transformer.{i}"
        x = ln(hidden, f"{p}.layer_norm_1")
        q, k, v = (
            linear(x, f"{p}.self_attn.linear_layers.{j}").view(batch, seq, heads, -1).transpose(1, 2) for j in range(3)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + mask
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, -1)
        hidden = hidden + linear(attn, f"{p}.self_attn.final_linear")
        x = ln(hidden, f"{p}.layer_norm_2")
        x = linear(x, f"{p}.feed_forward.linear_1")
        x = 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))  # UER-py's gelu_fast
        hidden = hidden + linear(x, f"{p}.feed_forward.linear_2")
    return ln(hidden, "encoder.layer_norm") @ uer[UER_LM_HEAD].t()


def random_uer_state_dict(config: GPT2Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """What UER-py's pretrain.py saves for this config: N(0, 0.02) matrices, LayerNorms not at 1/0 (as trained)."""
    generator = torch.Generator().manual_seed(seed)
    uer = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith(".gamma"):
            uer[name] = 1.0 + 0.2 * torch.randn(shape, generator=generator)
        else:
            uer[name] = 0.02 * torch.randn(shape, generator=generator)
    uer[UER_LM_HEAD] = uer[UER_WORD_EMBEDDINGS].clone()  # tied
    return uer


def uer_config_json(config: GPT2Config) -> dict:
    return {
        "emb_size": config.hidden_size,
        "feedforward_size": config.ffn_hidden_size,
        "hidden_size": config.hidden_size,
        "hidden_act": "gelu_fast",
        "heads_num": config.num_attention_heads,
        "layers_num": config.num_layers,
        "max_seq_length": config.max_position_embeddings,
        "dropout": 0.1,
    }


def write_uer_model(folder: Path, config: GPT2Config, seed: int = 0) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    folder.mkdir(parents=True, exist_ok=True)
    uer = random_uer_state_dict(config, seed)
    torch.save(uer, folder / "model.bin")
    (folder / "config.json").write_text(json.dumps(uer_config_json(config)))
    return folder / "model.bin", folder / "config.json", uer


def real_batch(vocab_file: Path, corpus_file: Path, rows: int = 4, length: int = 128) -> torch.Tensor:
    """A few real CLUECorpusSmall documents, framed [CLS] text [SEP] and packed, as training packs them."""
    tokenizer = BertChineseTokenizer(vocab_file)
    lines = corpus_file.read_text(encoding="utf-8").splitlines()[:40]
    stream: list[int] = []
    for ids in tokenizer.encode_batch(lines):
        stream += [tokenizer.cls, *ids, tokenizer.sep]
    assert len(stream) >= rows * length
    return torch.tensor(stream[: rows * length]).view(rows, length)


# --------------------------------------------------------------------------------------------- import


def test_round_trip_uer_ours_uer_is_exact(tmp_path, zh_vocab_file):
    model_file, config_file, uer = write_uer_model(tmp_path / "uer", TINY)
    argv = ["--input", str(model_file), "--uer-config", str(config_file), "--vocab-file", str(zh_vocab_file)]
    assert run_tool("convert_from_uer", [*argv, "--output", str(tmp_path / "ours")]) == 0
    loaded = load_checkpoint_weights(tmp_path / "ours")
    assert loaded.tag == "global_step0" and loaded.model_config == TINY
    assert torch.equal(
        loaded.state_dict["layers.1.self_attention.query_key_value.weight"][128:256],
        uer["encoder.transformer.1.self_attn.linear_layers.1.weight"],
    )  # K is the second third of our fused projection

    assert (
        run_tool("convert_to_uer", ["--checkpoint", str(tmp_path / "ours"), "--output", str(tmp_path / "back.bin")])
        == 0
    )
    back = torch.load(tmp_path / "back.bin", map_location="cpu", weights_only=True)
    assert list(back) == list(expected_shapes(TINY))  # UER-py's names, nothing more
    for name, tensor in uer.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    assert back[UER_LM_HEAD].data_ptr() != back[UER_WORD_EMBEDDINGS].data_ptr()  # its own tensor
    written = json.loads((tmp_path / "back.json").read_text())
    assert {k: written[k] for k in uer_config_json(TINY)} == uer_config_json(TINY)
    assert written["layernorm_positioning"] == "pre" and written["remove_embedding_layernorm"] is True
    assert not list(tmp_path.glob(".back*")), "no temporary file left behind"

    # Without the config: sizes from the tensors, the head count given.
    assert (
        run_tool(
            "convert_from_uer",
            [*argv[:2], *argv[4:], "--num-attention-heads", "4", "--output", str(tmp_path / "inferred")],
        )
        == 0
    )
    assert load_checkpoint_weights(tmp_path / "inferred").model_config == TINY


def test_import_refuses_what_does_not_fit(tmp_path, zh_vocab_file):
    model_file, config_file, uer = write_uer_model(tmp_path / "uer", TINY)

    def convert(weights=None, config=None, **kwargs):
        path, cfg = model_file, config_file
        if weights is not None:
            path = tmp_path / "variant.bin"
            torch.save(weights, path)
        if config is not None:
            cfg = tmp_path / "variant.json"
            cfg.write_text(json.dumps(config))
        return import_model("uer", path, tmp_path / "out", vocab_file=zh_vocab_file, uer_config=cfg, **kwargs)

    missing = {k: v for k, v in uer.items() if k != "encoder.transformer.1.layer_norm_2.beta"}
    with pytest.raises(CheckpointError, match=r"missing encoder\.transformer\.1\.layer_norm_2\.beta"):
        convert(missing)
    with pytest.raises(CheckpointError, match=r"unknown target\.lm\.output_layer\.bias"):
        convert({**uer, "target.lm.output_layer.bias": torch.zeros(21128)})
    with pytest.raises(CheckpointError, match=r"missing encoder\.transformer\.2\."):
        convert(config={**uer_config_json(TINY), "layers_num": 3})
    with pytest.raises(
        CheckpointError,
        match=r"feed_forward\.linear_1\.weight has shape \(512, 128\), the config implies \(1024, 128\)",
    ):
        convert(config={**uer_config_json(TINY), "feedforward_size": 1024})
    with pytest.raises(ConfigError, match="hidden_act 'gelu'"):
        convert(config={**uer_config_json(TINY), "hidden_act": "gelu"})
    with pytest.raises(ConfigError, match="layernorm_positioning 'post'"):
        convert(config={**uer_config_json(TINY), "layernorm_positioning": "post"})
    with pytest.raises(CheckpointError, match="differs from embedding.word.embedding.weight"):
        convert({**uer, UER_LM_HEAD: uer[UER_LM_HEAD] + 1})
    with pytest.raises(ConfigError, match="pass --num-attention-heads"):
        import_model("uer", model_file, tmp_path / "out", vocab_file=zh_vocab_file)
    # A pickle that is more than tensors is refused by the restricted unpickler, not run.
    torch.save({"args": __import__("argparse").Namespace(x=1), **uer}, tmp_path / "pickle.bin")
    with pytest.raises(CheckpointError, match="cannot read UER-py model .* as a state dict of tensors"):
        import_model("uer", tmp_path / "pickle.bin", tmp_path / "out", vocab_file=zh_vocab_file, uer_config=config_file)
    assert not (tmp_path / "out").exists()

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty; pass --overwrite"):
        convert()
    convert(overwrite=True)
    with pytest.raises(ConfigError, match="contains the UER-py model"):  # --overwrite never deletes an input
        import_model(
            "uer", model_file, model_file.parent, vocab_file=zh_vocab_file, uer_config=config_file, overwrite=True
        )
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "latest").is_file()


def test_export_refuses_to_overwrite(tmp_path, zh_vocab_file):
    model_file, config_file, _ = write_uer_model(tmp_path / "uer", TINY)
    import_model("uer", model_file, tmp_path / "ours", vocab_file=zh_vocab_file, uer_config=config_file)
    (tmp_path / "out.json").write_text("{}")
    with pytest.raises(ConfigError, match="out.json exists; pass --overwrite"):
        export_checkpoint("uer", tmp_path / "ours", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    export_checkpoint("uer", tmp_path / "ours", tmp_path / "out.bin", overwrite=True)
    assert json.loads((tmp_path / "out.json").read_text()) == to_uer_config(TINY)
    with pytest.raises(ConfigError, match="lies inside the checkpoint directory"):  # the shared overlap guard
        export_checkpoint(
            "uer", tmp_path / "ours", tmp_path / "ours" / "global_step0" / "mp_rank_00_model_states.pt", overwrite=True
        )


# ------------------------------------------------------------------------- the tools take the import


def test_imported_uer_model_trains_exports_generates_and_evaluates(tmp_path, zh_text_document, zh_corpus_file, capsys):
    vocab = zh_text_document["vocab"]
    model_file, config_file, uer = write_uer_model(tmp_path / "uer", TINY)
    imported = tmp_path / "imported"
    import_model("uer", model_file, imported, vocab_file=vocab, uer_config=config_file)

    # tools/convert_to_hf.py: the export passes its self-check (logits equal ours within 1e-4).
    assert (
        run_tool(
            "convert_to_hf", ["--checkpoint", str(imported), "--vocab-file", vocab, "--output", str(tmp_path / "hf")]
        )
        == 0
    )
    # tools/generate.py and tools/evaluate.py --checkpoint.
    assert (
        run_tool(
            "generate",
            [
                "--checkpoint",
                str(imported),
                "--vocab-file",
                vocab,
                "--prompt",
                "今天",
                "--greedy",
                "--max-new-tokens",
                "4",
                "--device",
                "cpu",
                "--json",
                "--no-stream",
            ],
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["prompt"] == "今天"
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n".join(zh_corpus_file.read_text(encoding="utf-8").splitlines()[:20]), encoding="utf-8")
    assert (
        run_tool(
            "evaluate",
            [
                "--checkpoint",
                str(imported),
                "--vocab-file",
                vocab,
                "--input",
                str(heldout),
                "--seq-length",
                "128",
                "--no-progress",
            ],
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["documents"] == 20

    # pretrain_gpt.py --load IMPORTED --finetune: step 1 runs at lr 0, so its checkpoint holds the UER-py weights.
    save = tmp_path / "continued"
    run(finetune_args(pretrain_args(zh_text_document, save, **LR0_FIRST_STEP), imported), ranks=None)
    assert len(read_metrics(save / "metrics.jsonl")) == 3
    step1 = load_checkpoint_weights(save, "global_step1")
    export_checkpoint("uer", save, tmp_path / "step1.bin", tag="global_step1")
    back = torch.load(tmp_path / "step1.bin", map_location="cpu", weights_only=True)
    assert all(torch.equal(back[name], tensor) for name, tensor in uer.items())
    assert step1.client_state.train_config["load"] == str(imported)
    # The model card of its export follows the stage back to the UER-py file it started from.
    export_checkpoint("hf", save, tmp_path / "hf2")
    card = (tmp_path / "hf2" / "README.md").read_text(encoding="utf-8")
    print(card)
    assert f"imported from UER-py model {model_file.resolve()}" in card and "- steps: 3 done of 3 planned" in card


# ------------------------------------------------------------------ the LayerNorm difference, measured


@pytest.mark.parametrize("preset", ["gpt2-tiny", "gpt2-distil"])
def test_logit_difference_from_uer_layer_norm(preset, tmp_path, zh_vocab_file, zh_corpus_file):
    """UER-py's forward vs ours on the same weights (imported with convert_from_uer), on real text.

    Printed figures are the README's. Two things differ in UER-py's LayerNorm: the unbiased std
    (a factor sqrt(h / (h - 1))) and eps 1e-6 added to the std instead of 1e-5 to the variance
    (which matters where activations are small, as at the embedding output). With the standard
    LayerNorm in the reference the two forwards agree to float32 rounding: the LayerNorm is the
    whole difference."""
    config = GPT2Config.from_preset(preset)
    model_file, config_file, uer = write_uer_model(tmp_path / "uer", config, seed=1)
    import_model("uer", model_file, tmp_path / "ours", vocab_file=zh_vocab_file, uer_config=config_file)
    loaded = load_checkpoint_weights(tmp_path / "ours")
    assert loaded.model_config.layernorm_epsilon == 1e-5  # the gpt2-distil preset's and the published export's
    ours = load_model(str(tmp_path / "ours"), vocab_file=str(zh_vocab_file)).model
    tiny_eps = model_from_state_dict(
        dataclasses.replace(loaded.model_config, layernorm_epsilon=1e-12), loaded.state_dict
    )
    ids = real_batch(zh_vocab_file, zh_corpus_file)
    with torch.no_grad():
        mine, mine_tiny_eps = ours(ids).logits, tiny_eps(ids).logits
        theirs = uer_logits(uer, config.num_attention_heads, ids)
        control = uer_logits(uer, config.num_attention_heads, ids, standard_ln=True)
    diff = (mine - theirs).abs().max().item()
    std_only = (mine_tiny_eps - theirs).abs().max().item()
    control_diff = (mine - control).abs().max().item()
    scale = theirs.abs().max().item()
    print(
        f"\n{preset}: max |logit diff| UER-py vs ours {diff:.3g} (max |logit| {scale:.3g}); "
        f"with our eps at 1e-12 (unbiased std alone) {std_only:.3g}; standard LayerNorm vs ours {control_diff:.3g}"
    )
    for measured in (diff, std_only):
        assert 1e-5 < measured < 0.05 * scale, "UER-py's LayerNorm should differ a little, not a lot"
    assert control_diff < 1e-4
    assert ids.numel() == 512 and (ids == 101).any()


# ---------------------------------------------------------------------------------- recipe configs


def test_uer_recipe_configs_resolve_on_8_gpus():
    def resolve(name: str):
        args = build_parser().parse_args(["--ds_config", str(REPO_ROOT / "ds_configs" / name)])
        return build_run_config(args, world_size=8)

    stage1, stage2 = resolve("uer_stage1.json"), resolve("uer_stage2.json")
    for run_config, seq, micro, batch, iters, lr in (
        (stage1, 128, 64, 512, 1_000_000, 1e-4),
        (stage2, 1024, 16, 128, 250_000, 5e-5),
    ):
        ds = run_config.deepspeed
        assert run_config.model == GPT2Config.from_preset("gpt2-distil")
        assert (run_config.train.data.seq_length, run_config.train.train_iters) == (seq, iters)
        assert (run_config.micro_batch_size, run_config.gradient_accumulation_steps, run_config.global_batch_size) == (
            micro,
            1,
            batch,
        )
        assert run_config.precision == "fp32"
        assert run_config.train.data.sample_mode == "document"  # UER-py's per-document chunks, padded tail
        # UER-py's AdamW (correct_bias=False), as DeepSpeed writes it: bias_correction=false, no torch_adam
        # (torch.optim.AdamW always corrects the bias). megatron_zh.optim.UerAdamW runs it (test_uer_optimizer.py).
        assert ds["optimizer"] == {
            "type": "AdamW",
            "params": {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.0, "bias_correction": False},
        }
        assert ds["gradient_clipping"] == 0.0
        assert ds["scheduler"] == {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_type": "linear",
                "warmup_num_steps": iters // 10,
                "warmup_max_lr": lr,
                "total_num_steps": iters,
            },
        }
        assert ds["zero_optimization"]["stage"] == 1
    assert not stage1.train.finetune
    assert stage2.train.finetune and stage2.train.load == stage1.train.save


def test_the_published_distil_config_is_the_gpt2_distil_preset(uer_distil_config_file):
    """UER-py's real models/gpt2/distil_config.json maps onto our preset, and our export writes it back."""
    published = read_uer_config(uer_distil_config_file)
    config = config_from_uer(published, vocab_size=21128)
    assert config == GPT2Config.from_preset("gpt2-distil")
    written = to_uer_config(config)
    assert {k: written[k] for k in published} == published  # every key UER-py's file has, with its value
