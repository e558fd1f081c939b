"""Conversion tools cannot destroy their input, and a Hugging Face folder's vocab cannot be swapped silently.

A tiny GPT-2 saved by `transformers` (tests/support/tiny_models.py) stands in for a hub folder; the checkpoint
the export reads is that folder imported by tools/convert_from_hf.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from tiny_models import make_tiny_hf
from tool_runs import run_tool

from megatron_zh.paths import overlap


def last_line_only_error(err: str) -> str:
    """The one `error:` line a tool ended with (log lines before it depend on which test set up logging)."""
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("error")] == lines[-1:] and "Traceback" not in err, err
    return lines[-1]


def tree(folder: Path) -> dict[str, str]:
    """Every file below `folder` and a hash of its bytes: to show nothing was touched."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, zh_vocab_file) -> Path:
    return make_tiny_hf(tmp_path_factory.mktemp("tiny_hf") / "gpt2-tiny", zh_vocab_file)


@pytest.fixture(scope="module")
def tiny_checkpoint_dir(tiny_hf, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("tiny_ckpt") / "ckpt"
    assert run_tool("convert_from_hf", ["--hf", str(tiny_hf), "--output", str(output)]) == 0
    return output


@pytest.fixture(scope="module")
def other_vocab(zh_vocab_file, tmp_path_factory) -> Path:
    """The real vocab with two tokens swapped: same size, other ids."""
    tokens = zh_vocab_file.read_bytes().split(b"\n")  # not splitlines(): the vocab holds \x1c and the like
    tokens[2000], tokens[2001] = tokens[2001], tokens[2000]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_bytes(b"\n".join(tokens))
    return path


def test_overlap_is_realpath_based(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert overlap(tmp_path / "a", f"{tmp_path}//a") == "is"
    assert overlap(f"{tmp_path}/a/../a/", tmp_path / "link") == "is"
    assert overlap(tmp_path, tmp_path / "link" / "b") == "contains"
    assert overlap(tmp_path / "link" / "b" / "new", tmp_path / "a") == "lies inside"
    assert overlap(tmp_path / "a" / "b", tmp_path / "a" / "bb") is None
    assert overlap(tmp_path / "ab", tmp_path / "a") is None


@pytest.mark.parametrize("where", ["{hf}", "{hf}/../{name}/", "{hf}/sub", "{hf}/..", "{link}"])
def test_convert_from_hf_refuses_an_output_overlapping_its_input(tiny_hf, tmp_path, capsys, where):
    (tmp_path / "link").symlink_to(tiny_hf)
    before = tree(tiny_hf.parent)
    output = where.format(hf=tiny_hf, name=tiny_hf.name, link=tmp_path / "link")
    assert run_tool("convert_from_hf", ["--hf", str(tiny_hf), "--output", output, "--overwrite"]) == 2
    err = last_line_only_error(capsys.readouterr().err)
    assert err.startswith("error: --output") and "the --hf folder" in err, err
    assert tree(tiny_hf.parent) == before


@pytest.mark.parametrize("where", ["{ckpt}", "{ckpt}//", "{ckpt}/hf", "{ckpt}/.."])
def test_convert_to_hf_refuses_an_output_overlapping_its_input(tiny_checkpoint_dir, zh_vocab_file, capsys, where):
    before = tree(tiny_checkpoint_dir.parent)
    output = where.format(ckpt=tiny_checkpoint_dir)
    argv = ["--checkpoint", str(tiny_checkpoint_dir), "--output", output, "--overwrite", "--vocab-file"]
    assert run_tool("convert_to_hf", [*argv, str(zh_vocab_file)]) == 2
    err = last_line_only_error(capsys.readouterr().err)
    assert "the checkpoint directory" in err, err
    assert tree(tiny_checkpoint_dir.parent) == before


def test_convert_to_hf_refuses_an_output_holding_the_vocab(tiny_checkpoint_dir, zh_vocab_file, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    shutil.copy(zh_vocab_file, vocab)
    argv = ["--checkpoint", str(tiny_checkpoint_dir), "--output", str(tmp_path), "--overwrite"]
    assert run_tool("convert_to_hf", [*argv, "--vocab-file", str(vocab)]) == 2
    assert "contains --vocab-file" in capsys.readouterr().err and vocab.is_file()


def test_a_vocab_other_than_the_folders_is_refused_everywhere(tiny_hf, other_vocab, tmp_path, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_text("今天天气很好。\n我们去公园散步吧。\n", encoding="utf-8")
    commands = {
        "convert_from_hf": ["--hf", str(tiny_hf), "--output", str(tmp_path / "out")],
        "evaluate": ["--hf", str(tiny_hf), "--input", str(corpus), "--seq-length", "16", "--device", "cpu"],
        "generate": ["--hf", str(tiny_hf), "--prompt", "今天", "--max-new-tokens", "2", "--device", "cpu"],
    }
    for name, argv in commands.items():
        assert run_tool(name, [*argv, "--vocab-file", str(other_vocab)]) == 2, name
        err = last_line_only_error(capsys.readouterr().err)
        assert f"--vocab-file {other_vocab} is not the vocab of the model in {tiny_hf}" in err, err
        assert err.count("sha256:") == 2 and str(tiny_hf / "vocab.txt") in err
    assert not (tmp_path / "out").exists()


def test_the_folders_own_vocab_is_used_or_an_identical_copy_accepted(tiny_hf, zh_vocab_file, tmp_path, capsys):
    copy = tmp_path / "copy_of_vocab.txt"
    shutil.copy(zh_vocab_file, copy)
    argv = ["--hf", str(tiny_hf), "--prompt", "今天", "--max-new-tokens", "2", "--device", "cpu", "--json"]
    assert run_tool("generate", argv) == 0
    assert run_tool("generate", [*argv, "--vocab-file", str(copy)]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert json.loads(first) == json.loads(second)
    out = tmp_path / "imported"
    assert run_tool("convert_from_hf", ["--hf", str(tiny_hf), "--output", str(out), "--vocab-file", str(copy)]) == 0
