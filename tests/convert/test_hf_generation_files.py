"""The export is made for TextGenerationPipeline (transformers 5.24): AutoTokenizer frames a prompt `[CLS] prompt`,
generation_config.json sets no length, and the self-check refuses a folder where either does not hold.

The model is tiny (tests/support/tiny_models.py, 64 positions), imported and exported in-process; the exact
snippet of the model card runs on a trained export in tests/integration/test_convert.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_hf

from megatron_zh.convert.formats import export_checkpoint, import_model
from megatron_zh.convert.hf import exporter
from megatron_zh.errors import CheckpointError
from megatron_zh.text.tokenizer import BertChineseTokenizer

PROMPT = "这是很久之前的事情了"


@pytest.fixture(scope="module")
def tiny_checkpoint_dir(tmp_path_factory, zh_vocab_file) -> Path:
    folder = tmp_path_factory.mktemp("generation_files")
    import_model("hf", make_tiny_hf(folder / "tiny_hf", zh_vocab_file), folder / "ckpt")
    return folder / "ckpt"


@pytest.fixture(scope="module")
def export(tiny_checkpoint_dir, zh_vocab_file) -> Path:
    output = tiny_checkpoint_dir.parent / "hf"
    export_checkpoint("hf", tiny_checkpoint_dir, output, vocab_file=zh_vocab_file)
    return output


def recorded_generate(model) -> list[tuple[list[int], int, dict]]:
    """Make `model.generate` record (ids it was fed, length it returned, the length arguments) per call."""
    calls, generate = [], model.generate

    def record(*args, **kwargs):
        output = generate(*args, **kwargs)
        lengths = {k: kwargs.get(k) for k in ("max_length", "max_new_tokens")}
        calls.append((kwargs["input_ids"][0].tolist(), output.shape[-1], lengths))
        return output

    model.generate = record
    return calls


def test_a_pipeline_with_autotokenizer_feeds_cls_prompt_and_honours_max_length(export, zh_vocab_file):
    from transformers import AutoTokenizer, BertTokenizer, GPT2LMHeadModel, TextGenerationPipeline

    prompt_ids = BertChineseTokenizer(zh_vocab_file).encode(PROMPT)
    model = GPT2LMHeadModel.from_pretrained(export, local_files_only=True)
    calls = recorded_generate(model)
    auto = AutoTokenizer.from_pretrained(export, local_files_only=True)
    torch.manual_seed(0)  # a sampled [SEP] would end the text early: make the draw the same every run
    TextGenerationPipeline(model, auto)(PROMPT, max_length=40, do_sample=True)
    assert calls[-1] == ([101, *prompt_ids], 40, {"max_length": 40, "max_new_tokens": None})
    # BertTokenizer.__init__ builds "[CLS] $A [SEP]" itself: the files cannot change it (the card says so).
    bert = BertTokenizer.from_pretrained(export, local_files_only=True)
    TextGenerationPipeline(model, bert)(PROMPT, max_length=40, do_sample=True)
    assert calls[-1][:2] == ([101, *prompt_ids, 102], 40)
    TextGenerationPipeline(model, bert)(PROMPT, max_length=40, do_sample=True, add_special_tokens=False, prefix="[CLS]")
    assert calls[-1][:2] == ([101, *prompt_ids], 41)  # the pipeline adds the prefix's length to max_length

    assert json.loads((export / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((export / "config.json").read_text())["tokenizer_class"] == "BertTokenizer"
    assert not set(exporter.LENGTH_KEYS) & set(json.loads((export / "generation_config.json").read_text()))


def test_the_self_check_refuses_a_tokenizer_that_ends_the_prompt_with_sep(
    tiny_checkpoint_dir, zh_vocab_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(exporter, "make_prompts_start_documents", lambda folder: None)  # BertTokenizer's files as saved
    with pytest.raises(CheckpointError) as caught:
        export_checkpoint("hf", tiny_checkpoint_dir, tmp_path / "hf", vocab_file=zh_vocab_file)
    message = str(caught.value)
    assert message.startswith("self-check failed: the exported AutoTokenizer (BertTokenizer) gives"), message
    assert "expected input_ids [101, " in message and not (tmp_path / "hf").exists()


def test_the_self_check_refuses_a_length_in_the_generation_config(
    tiny_checkpoint_dir, zh_vocab_file, tmp_path, monkeypatch
):
    write = exporter.write_hf_folder

    def write_with_a_length(folder, *args):
        write(folder, *args)
        config = json.loads((folder / "generation_config.json").read_text())
        (folder / "generation_config.json").write_text(json.dumps({**config, "max_new_tokens": 100}))

    monkeypatch.setattr(exporter, "write_hf_folder", write_with_a_length)
    with pytest.raises(CheckpointError, match=r"self-check failed: generation_config.json sets \['max_new_tokens'\]"):
        export_checkpoint("hf", tiny_checkpoint_dir, tmp_path / "hf", vocab_file=zh_vocab_file)
    assert not (tmp_path / "hf").exists()


def test_the_cards_snippet_fits_a_model_with_fewer_positions(export, monkeypatch):
    """64 positions: the card's call asks for 63 tokens (the BertTokenizer call's prefix makes 64), and runs."""
    from transformers import GPT2LMHeadModel

    card = (export / "README.md").read_text(encoding="utf-8")
    code = card.split("```python\n", 1)[1].split("```", 1)[0].replace(f'"{export.name}"', repr(str(export)))
    assert code.splitlines()[-1] == f'text_generator("{PROMPT}", max_length=63, do_sample=True)'
    assert "64 tokens in all" in card and "the model's 64 positions" in card
    outputs = []
    generate = GPT2LMHeadModel.generate

    def recorded(*args, **kwargs):
        outputs.append(generate(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(GPT2LMHeadModel, "generate", recorded)
    torch.manual_seed(0)
    exec(code, {})  # the card's own lines
    assert [output.shape[-1] for output in outputs] == [63]
