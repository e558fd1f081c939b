"""The README.md model card of a Hugging Face export: every number on it comes from the checkpoint,
its run's config.json and metrics.jsonl, and the datasets' .meta.json; what is missing says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_zh.checkpoint.weights import load_checkpoint_weights
from megatron_zh.convert.formats import export_checkpoint
from megatron_zh.convert.hf.model_card import MISSING, MODEL_CARD_FILE, render_model_card
from megatron_zh.data.indexed.dataset import read_metadata
from megatron_zh.training.metrics import read_metrics


@pytest.fixture(scope="module")
def card(tiny_checkpoint, tmp_path_factory) -> str:
    output = tmp_path_factory.mktemp("card") / "gpt2-tiny-chinese"
    export_checkpoint("hf", tiny_checkpoint["save"], output)
    return (output / MODEL_CARD_FILE).read_text(encoding="utf-8")


def test_card_numbers_are_the_checkpoints(card, tiny_checkpoint):
    save = tiny_checkpoint["save"]
    loaded = load_checkpoint_weights(save)
    parameters = sum(t.numel() for t in loaded.state_dict.values())
    assert f"{parameters:,} parameters" in card and parameters > 3_000_000
    assert "2 layers, hidden size 128, 4 attention heads, feed-forward size 512, 256 positions" in card
    assert "vocabulary of 21,128 tokens" in card and loaded.vocab_fingerprint in card

    # Training data: the dataset's own counts.
    meta = read_metadata(tiny_checkpoint["prefix"])
    name = Path(tiny_checkpoint["prefix"]).name
    assert f"`{name}`: {meta['documents']:,} documents, {meta['tokens']:,} tokens" in card

    # Training procedure: client state (steps, precision, ranks, sequence) and the run's config.json (batch, lr).
    run_config = json.loads((save / "config.json").read_text())
    assert run_config["deepspeed"]["train_batch_size"] == 16
    assert "- steps: 8 done of 8 planned" in card
    assert "- sequence length: 128" in card
    assert "- batch: 16 sequences per step (4 per rank x 2 ranks x 2 accumulation)" in card
    assert "128 samples over 8 steps average 16" in card
    assert f"- learning rate: peak {run_config['deepspeed']['optimizer']['params']['lr']:g}, linear warm-up" in card
    assert "- precision: fp32; data-parallel ranks (GPUs): 2" in card
    assert "random initialisation, N(0, 0.02), seed 1234" in card

    # Evaluation: the last validation of metrics.jsonl.
    record = read_metrics(save / "metrics.jsonl", "eval")[-1]
    assert record["iteration"] == 8
    assert f"loss {record['loss']:.4f} nats/token, perplexity {record['ppl']:.2f}" in card

    # The commands: the training command line as recorded (without the launcher's --local_rank), and the export.
    assert "pretrain_gpt.py --ds_config" in card and "--train-iters 8" in card and "--local_rank" not in card
    assert f"python tools/convert_checkpoint.py --to hf --checkpoint {save} --output" in card
    assert 'GPT2LMHeadModel.from_pretrained("gpt2-tiny-chinese")' in card and "TextGenerationPipeline" in card
    assert MISSING not in card


def test_card_says_what_is_missing(tiny_checkpoint, tmp_path):
    """An older run: no command line in config.json, no metrics.jsonl, the dataset gone."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint["save"], copy)
    run_config = json.loads((copy / "config.json").read_text())
    del run_config["argv"]
    (copy / "config.json").write_text(json.dumps(run_config))
    (copy / "metrics.jsonl").unlink()
    state_file = copy / "global_step8" / "client_state.json"
    state = json.loads(state_file.read_text())
    state["train_config"]["data_path"] = [str(tmp_path / "gone_text_document")]
    state_file.write_text(json.dumps(state))
    card = render_model_card(
        load_checkpoint_weights(copy),
        model_name="m",
        export={"max_logit_diff": 1e-6, "self_check_tokens": 10, "command": "python tools/convert_to_hf.py"},
    )
    assert f"{MISSING} (checkpoint written before pretrain_gpt.py recorded its command line)" in card
    assert f"Validation loss: {MISSING}" in card
    assert "`gone_text_document`: documents and tokens unknown" in card
    assert "holds a later start's settings" in card  # config.json's pretrain block no longer matches
