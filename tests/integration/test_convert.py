"""Checkpoint reading, Hugging Face export and import, on real DeepSpeed checkpoints.

The checkpoints come from real runs of pretrain_gpt.py: `tiny_checkpoint` (2 ranks, ZeRO-1, fp32)
and a 3-rank bf16 run through DeepSpeed's BF16_Optimizer (fp32 masters in
bf16_zero_pp_rank_* files, alignment padding on the last rank). References are DeepSpeed's own
files (the module copy) and `transformers` (GPT2LMHeadModel, BertTokenizer, AutoTokenizer, TextGenerationPipeline).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tool_runs import run_tool
from training_runs import LR0_FIRST_STEP, finetune_args, latest, pretrain_args, run

from megatron_zh.checkpoint.layout import MODEL_STATES_FILE
from megatron_zh.checkpoint.weights import load_checkpoint_weights, model_state_keys
from megatron_zh.convert.formats import export_checkpoint, import_model
from megatron_zh.convert.hf import card_usage
from megatron_zh.convert.hf import exporter as hf_export
from megatron_zh.convert.loading import load_model
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.training.metrics import read_metrics


def module_weights(save: Path) -> dict[str, torch.Tensor]:
    """What DeepSpeed saved as the model (the training-dtype copy), for comparison."""
    states = torch.load(save / latest(save) / MODEL_STATES_FILE, map_location="cpu", weights_only=False)
    return states["module"]


@pytest.fixture(scope="module")
def hf_export_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("export") / "hf"
    assert run_tool("convert_to_hf", ["--checkpoint", str(tiny_checkpoint["save"]), "--output", str(output)]) == 0
    return output


# ------------------------------------------------------------------------------------ reading weights


def test_zero1_fp32_masters_are_the_module_weights(tiny_checkpoint):
    loaded = load_checkpoint_weights(tiny_checkpoint["save"])
    assert loaded.tag == "global_step8" and loaded.weights_source == "zero-fp32-master (2 ranks)"
    assert list(loaded.state_dict) == model_state_keys(loaded.model_config)
    module = module_weights(tiny_checkpoint["save"])
    assert module["embedding.word_embeddings.weight"].dtype == torch.float32
    for name, tensor in loaded.state_dict.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, module[name]), name
    assert loaded.client_state.iteration == 8 and loaded.vocab_fingerprint.startswith("sha256:")


def test_bf16_optimizer_masters_are_fp32_not_the_bf16_copies(bf16_checkpoint):
    folder = bf16_checkpoint / latest(bf16_checkpoint)
    assert sorted(p.name for p in folder.glob("*optim_states.pt")) == [
        f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(3)
    ]
    padding = torch.load(
        folder / "bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt", map_location="cpu", weights_only=False
    )["optimizer_state_dict"]["group_paddings"]
    assert any(padding), "the last rank should hold alignment padding (3 ranks)"

    loaded = load_checkpoint_weights(bf16_checkpoint)
    assert loaded.weights_source == "zero-fp32-master (bf16 optimizer, 3 ranks)"
    module = module_weights(bf16_checkpoint)
    assert module["embedding.word_embeddings.weight"].dtype == torch.bfloat16
    finer = 0
    for name, master in loaded.state_dict.items():
        assert master.dtype == torch.float32
        # The bf16 copy is exactly the fp32 master rounded: every element, in every parameter.
        assert torch.equal(master.to(torch.bfloat16), module[name]), name
        finer += int((master != module[name].float()).sum())
    assert finer > 0.5 * sum(t.numel() for t in loaded.state_dict.values()), "masters should carry fp32 precision"


def test_incomplete_or_mismatched_shards_are_refused(tiny_checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint["save"], copy)
    folder = copy / latest(copy)
    (folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(CheckpointError, match="written by 2 ranks but .* has 1 optimizer files"):
        load_checkpoint_weights(copy)
    # Shards of another run (here: the optimizer files swapped for each other's ranks) do not match the module.
    shutil.copy(
        folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt", folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    )
    with pytest.raises(CheckpointError, match="differs from the module copy"):
        load_checkpoint_weights(copy)


# -------------------------------------------------------------------------------------------- export


def test_export_loads_in_transformers_with_our_logits(tiny_checkpoint, hf_export_dir):
    from transformers import BertTokenizer, GPT2LMHeadModel

    names = {p.name for p in hf_export_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    } <= names
    assert not list(hf_export_dir.parent.glob(".hf.*")), "no temporary folder left behind"
    assert (hf_export_dir / "vocab.txt").read_bytes() == Path(tiny_checkpoint["vocab"]).read_bytes()

    config = json.loads((hf_export_dir / "config.json").read_text())
    assert config["activation_function"] == "gelu_new" and config["tokenizer_class"] == "BertTokenizer"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (101, 102, 0)
    assert (
        config["n_layer"],
        config["n_embd"],
        config["n_head"],
        config["n_inner"],
        config["n_positions"],
        config["vocab_size"],
        config["layer_norm_epsilon"],
    ) == (2, 128, 4, 512, 256, 21128, 1e-5)
    tokenizer_config = json.loads((hf_export_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["do_lower_case"] is True and tokenizer_config["model_max_length"] == 256
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # AutoTokenizer: tokenizer.json as written
    generation = json.loads((hf_export_dir / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (101, 102, 0)
    assert "max_new_tokens" not in generation and "max_length" not in generation  # the caller's length holds
    info = json.loads((hf_export_dir / hf_export.EXPORT_INFO_FILE).read_text())
    assert info["weights_source"] == "zero-fp32-master (2 ranks)" and info["max_logit_diff"] <= 1e-4

    model = GPT2LMHeadModel.from_pretrained(hf_export_dir, local_files_only=True).eval()
    tokenizer = BertTokenizer.from_pretrained(hf_export_dir, local_files_only=True)
    ids = tokenizer("今天天气很好，iPhone")["input_ids"]
    assert ids == [101, 791, 1921, 1921, 3698, 2523, 1962, 8024, 8210, 102]
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied, as ours

    ours = load_model(str(tiny_checkpoint["save"]))
    texts = [
        "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
        "这部电影的剧情很精彩，演员的表演也非常自然，值得一看。",
    ]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["attention_mask"].all(), "equal-length texts: no padding, so both models see the same input"
    assert set(batch) == {"input_ids", "attention_mask"}, "GPT-2 would add wte(token_type_ids) to its input"
    with torch.no_grad():
        theirs = model(**batch).logits
        mine = ours.model(batch["input_ids"]).logits
    assert (theirs - mine).abs().max().item() <= 1e-4


def card_code(folder: Path) -> str:
    """The Python block of the export's model card, loading from `folder` (the card names the model)."""
    card = (folder / "README.md").read_text(encoding="utf-8")
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    return code.replace(f'"{folder.name}"', repr(str(folder)))


def test_the_cards_usage_snippet_continues_the_prompt_for_max_length_tokens(hf_export_dir, monkeypatch):
    """The seed's call, TextGenerationPipeline(model, tokenizer)(prompt, max_length=100, do_sample=True), as the
    card gives it: the model is fed [CLS] prompt (no [SEP] after it), and the text is 100 tokens long."""
    from transformers import BertTokenizer, GPT2LMHeadModel

    calls = []
    generate = GPT2LMHeadModel.generate

    def recorded(model, *args, **kwargs):
        output = generate(model, *args, **kwargs)
        calls.append((kwargs["input_ids"][0].tolist(), output[0].tolist(), kwargs.get("max_new_tokens")))
        return output

    monkeypatch.setattr(GPT2LMHeadModel, "generate", recorded)
    code = card_code(hf_export_dir)
    usage_call, bert_call, _ = card_usage.usage_calls(256)
    assert (
        code.splitlines()[-1] == usage_call == 'text_generator("这是很久之前的事情了", max_length=100, do_sample=True)'
    )

    assert "tokenizer = AutoTokenizer.from_pretrained(" in code
    bert = BertTokenizer.from_pretrained(hf_export_dir, local_files_only=True)
    prompt = bert("这是很久之前的事情了", add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    namespace: dict = {}
    exec(code, namespace)  # the card's own lines, nothing else
    fed, output, max_new_tokens = calls[-1]
    assert fed == [101, *prompt] and max_new_tokens is None
    # max_length counts the prompt; generation may only end earlier by sampling [SEP], the end of a document.
    assert len(output) == 100 or (output[-1] == 102 and len(output) < 100), output
    assert output[: len(fed)] == fed
    assert not {"max_new_tokens", "max_length"} & set(namespace["model"].generation_config.to_diff_dict())

    # What the card says of BertTokenizer (transformers 5.24): the same call feeds [CLS] prompt [SEP];
    # the card's call for it feeds [CLS] prompt, and the pipeline counts the prefix: max_length 101.
    namespace["text_generator"] = type(namespace["text_generator"])(namespace["model"], bert)
    exec(usage_call, namespace)
    assert calls[-1][0] == [101, *prompt, 102]
    exec(bert_call, namespace)
    fed, output, _ = calls[-1]
    assert fed == [101, *prompt] and (len(output) == 101 or output[-1] == 102)
    card = (hf_export_dir / "README.md").read_text(encoding="utf-8")
    assert bert_call in card and "101 tokens in all" in card and "256 positions" in card


def test_text_generation_pipeline_generates_from_the_export(hf_export_dir):
    from transformers import AutoTokenizer, GPT2LMHeadModel, TextGenerationPipeline

    model = GPT2LMHeadModel.from_pretrained(hf_export_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(hf_export_dir, local_files_only=True)
    generator = TextGenerationPipeline(model=model, tokenizer=tokenizer)
    torch.manual_seed(0)
    first = generator("今天天气很好", max_new_tokens=12, do_sample=True)[0]["generated_text"]
    torch.manual_seed(0)
    again = generator("今天天气很好", max_new_tokens=12, do_sample=True)[0]["generated_text"]
    assert first == again and first.startswith("今天天气很好")
    assert len(first.replace(" ", "")) > len("今天天气很好")


def test_export_of_bf16_run_uses_fp32_masters(bf16_checkpoint, tmp_path):
    result = export_checkpoint("hf", bf16_checkpoint, tmp_path / "hf")
    assert result.weights_source == "zero-fp32-master (bf16 optimizer, 3 ranks)" and result.max_logit_diff <= 1e-4
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "hf" / "model.safetensors")
    wte = exported["transformer.wte.weight"]
    assert wte.dtype == torch.float32
    assert torch.equal(wte, load_checkpoint_weights(bf16_checkpoint).state_dict["embedding.word_embeddings.weight"])
    assert not torch.equal(wte, module_weights(bf16_checkpoint)["embedding.word_embeddings.weight"].float())


def test_refuses_what_is_not_a_checkpoint(tiny_checkpoint, tmp_path):
    not_a_checkpoint = tmp_path / "not_a_checkpoint"  # beside the output: an output inside its input is refused
    not_a_checkpoint.mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint directory: no `latest` file"):
        export_checkpoint("hf", not_a_checkpoint, tmp_path / "out")
    with pytest.raises(CheckpointError, match="is not a directory"):
        export_checkpoint("hf", tmp_path / "missing", tmp_path / "out")
    with pytest.raises(CheckpointError, match="is one checkpoint's folder; pass the directory above it"):
        export_checkpoint("hf", tiny_checkpoint["save"] / "global_step8", tmp_path / "out")
    (not_a_checkpoint / "latest").write_text("global_step5")
    with pytest.raises(CheckpointError, match="global_step5 does not exist"):
        export_checkpoint("hf", not_a_checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_model_config_it_cannot_map(tiny_checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint["save"], copy)
    client_state = copy / latest(copy) / "client_state.json"
    state = json.loads(client_state.read_text())
    state["model_config"]["position_embedding_type"] = "rotary"  # a model GPT-2's config cannot express
    client_state.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="cannot map its model_config.*position_embedding_type"):
        export_checkpoint("hf", copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_vocab_with_another_fingerprint(tiny_checkpoint, tmp_path, capsys):
    tokens = Path(tiny_checkpoint["vocab"]).read_text(encoding="utf-8").split("\n")
    tokens[800], tokens[801] = tokens[801], tokens[800]  # same tokens, two ids swapped
    other = tmp_path / "vocab.txt"
    other.write_text("\n".join(tokens), encoding="utf-8")
    status = run_tool(
        "convert_to_hf",
        ["--checkpoint", str(tiny_checkpoint["save"]), "--output", str(tmp_path / "out"), "--vocab-file", str(other)],
    )
    assert status == 2
    err = capsys.readouterr().err
    # Progress lines may come first (the logger's handler is set up by whichever tool ran first in this process);
    # the refusal is the one error line, and the last.
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    assert errors[0].startswith("error: checkpoint ") and "was made with vocab sha256:" in errors[0]
    assert not (tmp_path / "out").exists()


def test_output_is_replaced_only_with_overwrite_and_only_after_the_self_check(tiny_checkpoint, tmp_path, monkeypatch):
    output = tmp_path / "hf"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty; pass --overwrite"):
        export_checkpoint("hf", tiny_checkpoint["save"], output)

    # A failing self-check (tolerance 0) leaves the old folder as it was and no temporary folder behind.
    monkeypatch.setattr(hf_export, "LOGIT_TOLERANCE", 0.0)
    with pytest.raises(CheckpointError, match="self-check failed: .*logits differ"):
        export_checkpoint("hf", tiny_checkpoint["save"], output, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["hf"] and [p.name for p in output.iterdir()] == ["keep.txt"]

    monkeypatch.undo()
    export_checkpoint("hf", tiny_checkpoint["save"], output, overwrite=True)
    assert not (output / "keep.txt").exists() and (output / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]
    with pytest.raises(ConfigError, match="is the checkpoint directory"):
        export_checkpoint("hf", tiny_checkpoint["save"], tiny_checkpoint["save"], overwrite=True)


# -------------------------------------------------------------------------------------------- import


def test_round_trip_ours_hf_ours_is_exact(tiny_checkpoint, hf_export_dir, tmp_path):
    assert run_tool("convert_from_hf", ["--hf", str(hf_export_dir), "--output", str(tmp_path / "imported")]) == 0
    original = load_checkpoint_weights(tiny_checkpoint["save"])
    imported = load_checkpoint_weights(tmp_path / "imported")
    assert imported.tag == "global_step0" and imported.weights_source == "module (float32)"
    assert imported.model_config == original.model_config
    assert imported.vocab_fingerprint == original.vocab_fingerprint
    assert list(imported.state_dict) == list(original.state_dict)
    for name, tensor in original.state_dict.items():
        assert torch.equal(imported.state_dict[name], tensor), name
    # The HF folder loads for generation/evaluation with the same weights as the checkpoint.
    via_hf = load_model(str(hf_export_dir), "hf")
    for name, tensor in via_hf.model.state_dict().items():
        assert torch.equal(tensor, original.state_dict[name]), name
    assert via_hf.tokenizer.fingerprint == original.vocab_fingerprint


def test_imports_a_hub_style_folder(hf_export_dir, tmp_path):
    """pytorch_model.bin with an explicit lm_head and the causal-mask buffers older GPT-2 files carry."""
    from safetensors.torch import load_file

    weights = load_file(hf_export_dir / "model.safetensors")
    weights["lm_head.weight"] = weights["transformer.wte.weight"].clone()
    for i in range(2):
        weights[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(256, 256)).view(1, 1, 256, 256)
    folder = tmp_path / "uer"
    folder.mkdir()
    torch.save(weights, folder / "pytorch_model.bin")
    config = json.loads((hf_export_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_ctx": 256}))
    shutil.copy(hf_export_dir / "vocab.txt", folder / "vocab.txt")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))

    import_model("hf", folder, tmp_path / "imported")
    imported = load_checkpoint_weights(tmp_path / "imported").state_dict
    assert torch.equal(imported["embedding.word_embeddings.weight"], weights["transformer.wte.weight"])
    assert torch.equal(imported["layers.1.mlp.dense_h_to_4h.weight"], weights["transformer.h.1.mlp.c_fc.weight"].t())


def test_import_refuses_what_it_cannot_convert(hf_export_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json: not a Hugging Face model folder"):
        import_model("hf", tmp_path / "empty", tmp_path / "out")
    folder = tmp_path / "relu"
    shutil.copytree(hf_export_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ConfigError, match="activation_function 'relu'"):
        import_model("hf", folder, tmp_path / "out")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors or pytorch_model.bin"):
        import_model("hf", folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pretraining_continues_from_an_imported_checkpoint(tiny_checkpoint, hf_export_dir, tmp_path):
    import_model("hf", hf_export_dir, tmp_path / "imported")
    imported = load_checkpoint_weights(tmp_path / "imported").state_dict
    dataset = {"prefix": tiny_checkpoint["prefix"], "vocab": tiny_checkpoint["vocab"]}
    save = tmp_path / "continued"
    run(finetune_args(pretrain_args(dataset, save, **LR0_FIRST_STEP), tmp_path / "imported"), ranks=None)  # no launcher

    losses = [r["loss"] for r in read_metrics(save / "metrics.jsonl")]
    fresh = 9.96  # ln(21128): a randomly initialised model's loss
    assert len(losses) == 3 and losses[0] < fresh - 0.5, f"loss {losses[0]} is not the trained model's"
    # Step 1 runs at lr 0 (warm-up starts at 0): its checkpoint holds exactly the imported weights.
    step1 = load_checkpoint_weights(save, "global_step1").state_dict
    assert all(torch.equal(step1[name], tensor) for name, tensor in imported.items())
    step3 = load_checkpoint_weights(save, "global_step3").state_dict
    assert not torch.equal(step3["embedding.word_embeddings.weight"], imported["embedding.word_embeddings.weight"])
