"""tools/inspect_data.py and data/datasets/inspection.py: the counts of a dataset, its [UNK] share, the
histogram of its document lengths, and any sample with the very ids the trainer's loader yields."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from repo_paths import REPO_ROOT
from training_runs import CPU_CONFIG

from megatron_zh.data.datasets.config import VocabIds
from megatron_zh.data.datasets.inspection import length_histogram, summarize, summary_lines, training_sample
from megatron_zh.text.tokenizer import BertChineseTokenizer
from megatron_zh.training.config.arguments import build_parser, build_run_config
from megatron_zh.training.distributed.process_group import DistEnv
from megatron_zh.training.loaders import build_datasets, build_loaders


def test_summary_of_the_real_corpus(zh_text_document):
    tokenizer = BertChineseTokenizer(zh_text_document["vocab"])
    summary = summarize(zh_text_document["prefix"], tokenizer.unk)
    assert (summary.documents, summary.tokens, summary.body_tokens) == (2500, 662925, 657925)
    assert summary.unk == 4270 and f"{100 * summary.unk_share:.2f}" == "0.65"
    assert summary.normalization == "none"
    lines = summary_lines(summary)
    assert lines[0].endswith(
        "2,500 documents, 662,925 tokens (657,925 without [CLS]/[SEP]); [UNK] 4,270 = 0.65%; text normalisation: none"
    )
    assert sum(int(line.rsplit("| ", 1)[1].replace(",", "")) for line in lines[2:]) == 2500


def test_length_histogram():
    assert length_histogram(np.array([3, 3, 5, 9, 40])) == [
        (2, 3, 2),
        (4, 7, 1),
        (8, 15, 1),
        (16, 31, 0),
        (32, 63, 1),
    ]
    assert length_histogram(np.array([1])) == [(1, 1, 1)]
    assert length_histogram(np.array([], dtype=np.int64)) == []


@pytest.mark.parametrize("mode", ["packed", "document"])
def test_a_sample_is_what_the_training_loader_yields(zh_text_document, tmp_path, mode):
    """Two epochs' worth of samples (the order then depends on the count): the ids of every sample of the
    first batches equal the loader's, index by index."""
    tokenizer = BertChineseTokenizer(zh_text_document["vocab"])
    argv = ["--ds_config", str(CPU_CONFIG), "--data-path", zh_text_document["prefix"], "--sample-mode", mode]
    argv += ["--vocab-file", zh_text_document["vocab"], "--data-cache-path", str(tmp_path), "--train-iters", "400"]
    run = build_run_config(build_parser().parse_args(argv), world_size=1)
    train, valid = build_datasets(run, tokenizer.fingerprint, tokenizer.pad)
    loader, _ = build_loaders(run, DistEnv(0, 1, 0, 1, "single"), train, valid, consumed_samples=0)
    num_samples = run.train.train_iters * run.global_batch_size
    vocab = VocabIds(fingerprint=tokenizer.fingerprint, pad=tokenizer.pad, normalization="none")
    for b, batch in zip(range(3), loader):
        for row in range(run.micro_batch_size):
            index = b * run.micro_batch_size + row
            sample = training_sample(run.train.data, index, "train", num_samples, vocab)
            assert sample["input_ids"].tolist() == batch["input_ids"][row].tolist()
            assert sample["labels"].tolist() == batch["labels"][row].tolist()
            assert sample["loss_mask"].tolist() == batch["loss_mask"][row].tolist()


@pytest.mark.integration
def test_the_tool(zh_text_document, tmp_path):
    common = [sys.executable, str(REPO_ROOT / "tools" / "inspect_data.py"), "--data-path", zh_text_document["prefix"]]
    common += ["--vocab-file", zh_text_document["vocab"], "--data-cache-path", str(tmp_path), "--seq-length", "32"]
    result = subprocess.run(
        [*common, "--plot", str(tmp_path / "lengths.png"), "--sample", "5", "--ids"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "[UNK] 4,270 = 0.65%" in out[0]
    assert (tmp_path / "lengths.png").read_bytes().startswith(b"\x89PNG")
    header = next(i for i, line in enumerate(out) if line.startswith("sample 5 of the train split (packed"))
    assert "33 tokens, 32 of 32 predictions scored" in out[header]
    tokenizer = BertChineseTokenizer(zh_text_document["vocab"])
    ids = [int(x) for x in out[header + 1].strip("[]").split(",")]
    assert out[header + 2] == tokenizer.decode(ids)
    bad = subprocess.run([*common, "--sample", "99999999"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: sample 99999999 is out of range: the train split has")
