"""A model trained on normalised text: the checkpoint says so, and generation, evaluation, the Hugging Face
export (its tokenizer files, export_info.json, the model card) and an import back all apply the same mapping."""

from __future__ import annotations

import json
import shutil

import pytest

from megatron_zh.checkpoint.client_state import read_client_state
from megatron_zh.checkpoint.weights import checkpoint_tokenizer, load_checkpoint_weights
from megatron_zh.convert.formats import export_checkpoint, import_model
from megatron_zh.convert.hf.model_card import MODEL_CARD_FILE
from megatron_zh.convert.hf.names import EXPORT_INFO_FILE
from megatron_zh.convert.loading import load_model
from megatron_zh.errors import DataFormatError
from megatron_zh.inference.evaluation import EvaluationConfig, evaluate_input
from megatron_zh.text.tokenizer import BertChineseTokenizer

TEXT = "他说：“这家店的菜……真不错”——下次还来。"


@pytest.fixture(scope="module")
def normalised_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny run's checkpoint, as if its data had been preprocessed with --normalize punctuation."""
    identity = BertChineseTokenizer(tiny_checkpoint["vocab"], normalization="punctuation").normalization.identity
    copy = tmp_path_factory.mktemp("normalised") / "ckpt"
    shutil.copytree(tiny_checkpoint["save"], copy)
    state_file = copy / "global_step8" / "client_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "normalization": identity}))
    return copy, identity


def test_generation_and_evaluation_apply_it(normalised_checkpoint, tiny_checkpoint, tmp_path):
    save, identity = normalised_checkpoint
    tokenizer = checkpoint_tokenizer(load_checkpoint_weights(save))
    assert tokenizer.normalization.identity == identity
    assert tokenizer.unk not in tokenizer.encode(TEXT)  # a prompt is encoded as the training data was
    loaded = load_model(str(save))
    corpus = tmp_path / "heldout.txt"
    corpus.write_text(TEXT + "\n", encoding="utf-8")
    config = EvaluationConfig(seq_length=32, progress=False)
    result = evaluate_input(loaded.model, loaded.tokenizer, str(corpus), config)
    assert result.stream_tokens == len(tokenizer.encode(TEXT)) + 2  # the text input was normalised too
    # A dataset made without the normalisation is refused, naming the way out.
    with pytest.raises(DataFormatError, match="preprocess it again with the same --normalize"):
        evaluate_input(loaded.model, loaded.tokenizer, tiny_checkpoint["prefix"], config)


def test_export_and_import_carry_it(normalised_checkpoint, tmp_path):
    from transformers import AutoTokenizer, BertTokenizer

    save, identity = normalised_checkpoint
    output = tmp_path / "hf"
    result = export_checkpoint("hf", save, output)  # its self-check loads the folder with AutoTokenizer
    assert result.normalization == identity
    assert json.loads((output / EXPORT_INFO_FILE).read_text())["normalization"] == identity
    ours = BertChineseTokenizer(output / "vocab.txt", normalization="punctuation")
    hf = AutoTokenizer.from_pretrained(output, local_files_only=True)
    assert hf(TEXT, add_special_tokens=False)["input_ids"] == ours.encode(TEXT)
    assert ours.unk not in ours.encode(TEXT)
    plain = BertTokenizer.from_pretrained(output, local_files_only=True)  # rebuilds its own normaliser
    assert ours.unk in plain(TEXT, add_special_tokens=False)["input_ids"]
    card = (output / MODEL_CARD_FILE).read_text(encoding="utf-8")
    assert f"before tokenizing ({identity})" in card and "tokenizer = AutoTokenizer.from_pretrained" in card

    assert load_model(str(output), "hf").tokenizer.normalization.identity == identity  # generate/evaluate --hf
    imported = import_model("hf", output, tmp_path / "back")
    assert read_client_state(imported.parent, imported.name).normalization == identity
