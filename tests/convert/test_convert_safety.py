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
import torch
from hostile import poison
from tiny_models import make_tiny_hf
from tool_runs import run_tool

from megatron_zh.convert.uer.importer import load_uer_weights
from megatron_zh.errors import CheckpointError
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


def tools_reading(folder: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Each tool that reads a Hugging Face folder, with arguments for a quick run (an import goes to tmp_path/out)."""
    corpus = tmp_path / "text.txt"
    corpus.write_text("今天天气很好。\n我们去公园散步吧。\n", encoding="utf-8")
    return {
        "convert_from_hf": ["--hf", str(folder), "--output", str(tmp_path / "out")],
        "evaluate": ["--hf", str(folder), "--input", str(corpus), "--seq-length", "16", "--device", "cpu"],
        "generate": ["--hf", str(folder), "--prompt", "今天", "--max-new-tokens", "2", "--device", "cpu"],
    }


def test_a_vocab_other_than_the_folders_is_refused_everywhere(tiny_hf, other_vocab, tmp_path, capsys):
    for name, argv in tools_reading(tiny_hf, tmp_path).items():
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


@pytest.fixture(scope="module")
def tiny_export(tiny_checkpoint_dir, zh_vocab_file, tmp_path_factory) -> Path:
    """A folder tools/convert_to_hf.py wrote (with its export_info.json), from the imported tiny checkpoint."""
    output = tmp_path_factory.mktemp("tiny_export") / "hf"
    argv = ["--checkpoint", str(tiny_checkpoint_dir), "--output", str(output), "--vocab-file", str(zh_vocab_file)]
    assert run_tool("convert_to_hf", argv) == 0
    return output


def test_a_vocab_swapped_in_an_export_is_refused_everywhere(tiny_export, zh_vocab_file, other_vocab, tmp_path, capsys):
    from megatron_zh.text.tokenizer import vocab_fingerprint

    folder = tmp_path / "hf"
    shutil.copytree(tiny_export, folder)
    shutil.copy(other_vocab, folder / "vocab.txt")  # same size, two ids swapped: nothing else would notice
    recorded = json.loads((folder / "export_info.json").read_text())["vocab_fingerprint"]
    assert recorded == vocab_fingerprint(zh_vocab_file) != vocab_fingerprint(other_vocab)
    expected = (
        f"error: {folder / 'vocab.txt'} is not the vocab the model in {folder} was exported with: its fingerprint "
        f"is {vocab_fingerprint(other_vocab)}, export_info.json records {recorded}; put back the vocab.txt the "
        "export wrote, or export the checkpoint again"
    )
    commands = tools_reading(folder, tmp_path)
    for name, argv in commands.items():
        for extra in ([], ["--vocab-file", str(zh_vocab_file)]):  # the right vocab given does not mend the folder
            assert run_tool(name, [*argv, *extra]) == 2, name
            assert last_line_only_error(capsys.readouterr().err) == expected, (name, extra)
    assert not (tmp_path / "out").exists()

    shutil.copy(zh_vocab_file, folder / "vocab.txt")  # the way out
    assert run_tool("generate", commands["generate"]) == 0
    # A --vocab-file other than the recorded one is named as such.
    assert run_tool("generate", [*commands["generate"], "--vocab-file", str(other_vocab)]) == 2
    err = last_line_only_error(capsys.readouterr().err)
    assert err.startswith(f"error: --vocab-file {other_vocab} is not the vocab the model in {folder} was exported"), err
    assert err.endswith("drop --vocab-file to use the folder's own"), err


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "export_info.json"])
def test_a_folder_file_with_a_key_written_twice_is_refused(tiny_export, tmp_path, capsys, name):
    folder = tmp_path / "hf"
    shutil.copytree(tiny_export, folder)
    data = json.loads((folder / name).read_text())
    key = next(iter(data))
    (folder / name).write_text(json.dumps(data, indent=2)[:-2] + f',\n  "{key}": {json.dumps(data[key])}\n}}\n')
    assert run_tool("convert_from_hf", ["--hf", str(folder), "--output", str(tmp_path / "out")]) == 2
    err = last_line_only_error(capsys.readouterr().err)
    assert err.startswith(f'error: {folder / name}: key "{key}" is written twice (lines 2 and '), err
    assert not (tmp_path / "out").exists()


def test_a_uer_config_with_a_key_written_twice_is_refused(tmp_path):
    from megatron_zh.convert.uer.importer import read_uer_config
    from megatron_zh.errors import ConfigError

    path = tmp_path / "gpt2_distil_config.json"
    path.write_text('{\n  "emb_size": 768,\n  "heads_num": 12,\n  "layers_num": 6,\n  "heads_num": 8\n}\n')
    with pytest.raises(ConfigError) as caught:
        read_uer_config(path)
    assert str(caught.value).startswith(f'UER-py config {path}: key "heads_num" is written twice (lines 3 and 5)')


def test_a_truncated_uer_model_file_is_called_truncated(tmp_path):
    """Before: "cannot read ...: Invalid argument" (torch's OSError on a cut zip)."""
    model = tmp_path / "model.bin"
    torch.save({"embedding.word.embedding.weight": torch.randn(50, 20)}, model)
    size = model.stat().st_size // 2
    model.write_bytes(model.read_bytes()[:size])
    with pytest.raises(CheckpointError) as caught:
        load_uer_weights(model)
    assert str(caught.value) == (
        f"cannot read UER-py model {model} as a state dict of tensors: {model} is truncated ({size} bytes: a "
        "PyTorch zip file whose end, the archive's directory, is missing): the checkpoint is damaged (an "
        "interrupted save, a full disk or a partial copy)"
    )


def test_convert_to_uer_refuses_a_config_output_inside_the_checkpoint_first(tiny_checkpoint_dir, tmp_path, capsys):
    """Before: `exists; pass --overwrite` for an existing file there, and only then the overlap refusal."""
    before = tree(tiny_checkpoint_dir)
    inside = tiny_checkpoint_dir / "latest"
    assert inside.is_file()
    argv = ["--checkpoint", str(tiny_checkpoint_dir), "--output", str(tmp_path / "m.bin")]
    assert run_tool("convert_to_uer", [*argv, "--uer-config-output", str(inside)]) == 2
    err = last_line_only_error(capsys.readouterr().err)
    assert err.startswith("error: --uer-config-output") and "the checkpoint directory" in err, err
    assert tree(tiny_checkpoint_dir) == before and not (tmp_path / "m.bin").exists()


def test_convert_to_uer_refuses_a_hostile_checkpoint_unless_trusted(tiny_checkpoint_dir, tmp_path, capsys):
    """The payload never runs without --trust-checkpoint; with it, the checkpoint is unpickled unrestricted."""
    checkpoint = tmp_path / "hostile"
    shutil.copytree(tiny_checkpoint_dir, checkpoint)
    marker = tmp_path / "pwned"
    (poisoned,) = checkpoint.glob("*/mp_rank_00_model_states.pt")
    poison(poisoned, marker)
    argv = ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "m.bin")]
    assert run_tool("convert_to_uer", argv) == 2
    err = last_line_only_error(capsys.readouterr().err)
    assert err.startswith(f"error: {poisoned} needs global posix.system, which is not on the checkpoint allowlist"), err
    assert err.endswith("if you trust where it came from, pass --trust-checkpoint"), err
    assert not marker.exists() and not (tmp_path / "m.bin").exists() and not (tmp_path / "m.json").exists()

    assert run_tool("convert_to_uer", [*argv, "--trust-checkpoint"]) == 0
    assert marker.exists() and (tmp_path / "m.bin").is_file() and (tmp_path / "m.json").is_file()
