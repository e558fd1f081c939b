"""The README.md model card of a Hugging Face export: every number on it comes from the checkpoint,
its run's config.json and metrics.jsonl, and the datasets' .meta.json; what is missing says so."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from megatron_zh.checkpoint.weights import load_checkpoint_weights
from megatron_zh.convert.formats import export_checkpoint
from megatron_zh.convert.hf.model_card import MISSING, MODEL_CARD_FILE, render_model_card
from megatron_zh.data.indexed.dataset import read_metadata
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.pipeline import preprocess
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
    assert "then linear decay to 0 at step 8" in card  # plainly: DeepSpeed's WarmupDecayLR ends at warmup_min_lr
    assert "- precision: fp32; data-parallel ranks (GPUs): 2" in card
    # The kernels the start-up check chose (a CPU run: PyTorch code, nothing checked) and torch.compile.
    assert run_config["kernels"]["ops"] == {"layer_norm": "torch", "causal_attention": "torch"}
    assert "- kernels: layer_norm torch, causal_attention torch (PyTorch code: the Triton kernels run on CUDA" in card
    assert "; torch.compile: off\n" in card
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
    del run_config["argv"], run_config["kernels"]
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
    assert f"- kernels: {MISSING} (config.json written before runs recorded their kernels)" in card
    assert "`gone_text_document`: documents and tokens unknown" in card
    assert "holds a later start's settings" in card  # config.json's pretrain block no longer matches


CLUE_ARCHIVES = ("news2016zh_corpus", "webText2019zh_corpus", "wiki2019zh_corpus", "comment2019zh_corpus")


def clue_shaped_dataset(folder: Path, corpus: Path, vocab: Path) -> str:
    """CLUECorpusSmall's layout: four zips of 7 member files each, documents separated by blank lines."""
    lines = [line for line in corpus.read_text(encoding="utf-8").split("\n") if line][:280]
    for a, name in enumerate(CLUE_ARCHIVES):
        with zipfile.ZipFile(folder / f"{name}.zip", "w") as archive:
            for m in range(7):
                documents = lines[(a * 7 + m) * 10 : (a * 7 + m + 1) * 10]
                archive.writestr(f"{name}/part_{m:02d}.txt", "\n\n".join(documents) + "\n")
    config = PreprocessConfig(
        inputs=[str(folder / f"{name}.zip") for name in CLUE_ARCHIVES],
        output_prefix=str(folder / "clue"),
        vocab_file=str(vocab),
        document_boundary="blank-line",
        progress=False,
    )
    return preprocess(config).outputs["text"]


def test_card_names_each_archive_once_and_each_validation_source(tiny_checkpoint, tmp_path, zh_corpus_file):
    """Four CLUE-shaped archives of 28 members: each archive is one entry of the data line (members, size,
    documents, tokens, [UNK] share), the members are in .meta.json only; the validation sources get their
    own losses."""
    prefix = clue_shaped_dataset(tmp_path, zh_corpus_file, Path(tiny_checkpoint["vocab"]))
    meta = read_metadata(prefix)
    assert len(meta["inputs"]) == 28 and len(meta["by_input"]) == 4
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint["save"], copy)
    state_file = copy / "global_step8" / "client_state.json"
    state = json.loads(state_file.read_text())
    state["train_config"]["data_path"] = [prefix]
    state["train_config"]["valid_data_path"] = [f"reviews={tiny_checkpoint['prefix']}"]
    state_file.write_text(json.dumps(state))
    with open(copy / "metrics.jsonl", "a") as f:
        record = {"kind": "eval", "split": "valid", "source": "reviews", "iteration": 8, "loss": 9.5, "ppl": 13359.7}
        f.write(json.dumps({**record, "tokens": 512}) + "\n")
    card = render_model_card(
        load_checkpoint_weights(copy),
        model_name="m",
        export={"max_logit_diff": 0.0, "self_check_tokens": 1, "command": ""},
    )
    for entry, name in zip(meta["by_input"], CLUE_ARCHIVES):
        assert card.count(f"{name}.zip") == 1
        assert (
            f"{name}.zip (7 members, {entry['bytes'] / 1e6:,.1f} MB, {entry['documents']:,} documents, "
            f"{entry['tokens']:,} tokens, [UNK] {entry['unk_share']:.2%})" in card
        )
    assert "part_00.txt" not in card
    assert f"`clue_text_document`: {meta['documents']:,} documents, {meta['tokens']:,} tokens, [UNK] " in card
    assert "- data: `clue_text_document` (stage 1 under Training data)" in card
    assert "  - validation source `reviews` = `clue_text_document`: 2,500 documents" in card
    assert "- validation source `reviews` at step 8 (512 tokens): loss 9.5000 nats/token, perplexity 13359.70" in card
