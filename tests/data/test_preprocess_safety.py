"""Preprocessing never overwrites and never reads wrong: an existing dataset is refused unless --overwrite (and
then kept until the new one is complete), an output that is the vocab is refused however spelled, a file that
changes while it is read stops the run, a file named twice is read once, and every file or archive member left
out is logged with its reason and counted in the final line and PREFIX.meta.json."""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from test_preprocess import REPO, config, documents_of, framed, outputs_in, run_tool

from megatron_zh.data.indexed.dataset import read_metadata
from megatron_zh.data.preprocess.pipeline import preprocess
from megatron_zh.data.preprocess.results import ResultWriter
from megatron_zh.errors import ConfigError, DataFormatError

EXISTS = "exists; pass --overwrite to replace it (it is replaced only after the new one is complete)"


@pytest.fixture(scope="module")
def bert(zh_vocab_file):
    from transformers import BertTokenizer

    return BertTokenizer(str(zh_vocab_file))


@pytest.fixture(scope="module")
def lines(zh_corpus_file) -> list[str]:
    """200 real CLUECorpusSmall documents."""
    return zh_corpus_file.read_text(encoding="utf-8").split("\n")[:200]


def write_lines(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def dataset_files(prefix: Path) -> dict[str, bytes]:
    return {ext: Path(f"{prefix}{ext}").read_bytes() for ext in (".bin", ".idx", ".meta.json")}


# ------------------------------------------------------------------------------------------- outputs


def test_an_existing_dataset_is_refused_unless_overwrite(tmp_path, zh_vocab_file, bert, lines):
    big, small = write_lines(tmp_path / "big.txt", lines), write_lines(tmp_path / "small.txt", lines[:5])
    prefix = tmp_path / "out_text_document"
    preprocess(config(tmp_path, zh_vocab_file, [big]))
    before = dataset_files(prefix)
    # Any spelling of the prefix names the same files.
    for output in (tmp_path / "out", f"{tmp_path}//out", f"{tmp_path}/./out"):
        with pytest.raises(ConfigError) as error:
            preprocess(config(tmp_path, zh_vocab_file, [small], output_prefix=str(output)))
        assert str(error.value) == f"output {output}_text_document.bin {EXISTS}"
        assert dataset_files(prefix) == before
    # One file of a dataset is enough to refuse (the .meta.json of a run whose .bin/.idx were moved away).
    Path(f"{prefix}.bin").rename(tmp_path / "moved.bin")
    Path(f"{prefix}.idx").rename(tmp_path / "moved.idx")
    with pytest.raises(ConfigError, match=f"output {prefix}.meta.json exists; pass --overwrite"):
        preprocess(config(tmp_path, zh_vocab_file, [small]))

    preprocess(config(tmp_path, zh_vocab_file, [small], overwrite=True))
    assert documents_of(prefix) == framed(bert, lines[:5])
    assert read_metadata(prefix)["documents"] == 5


def test_with_overwrite_a_failed_run_leaves_the_old_dataset(tmp_path, zh_vocab_file, lines):
    prefix = tmp_path / "out_text_document"
    preprocess(config(tmp_path, zh_vocab_file, [write_lines(tmp_path / "good.txt", lines)]))
    before = dataset_files(prefix)
    bad = tmp_path / "bad.txt"
    bad.write_bytes("".join(t + "\n" for t in lines).encode() + b"broken \xc3\x28\n")
    with pytest.raises(DataFormatError, match="--strict stops at the first bad line"):
        preprocess(config(tmp_path, zh_vocab_file, [bad], overwrite=True, strict=True))
    assert dataset_files(prefix) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries


def test_a_shard_output_that_exists_is_refused(tmp_path, zh_vocab_file, lines):
    inputs = [write_lines(tmp_path / f"{i}.txt", lines[i * 50 : i * 50 + 50]) for i in range(2)]
    preprocess(config(tmp_path, zh_vocab_file, inputs, num_shards=2, shard_index=1))
    with pytest.raises(ConfigError, match=r"output .*out_shard00001-of-00002_text_document.bin exists"):
        preprocess(config(tmp_path, zh_vocab_file, inputs, num_shards=2, shard_index=1))


@pytest.mark.parametrize("spelling", ["direct", "double-slash", "dot-dot", "symlinked-folder", "hard-link"])
def test_an_output_that_is_the_vocab_file_is_refused_however_spelled(tmp_path, zh_vocab_file, lines, spelling):
    """Even with --overwrite: the vocab is an input. Before, the run wrote its .idx over the vocab."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    vocab = data / "out_text_document.idx"
    vocab.write_bytes(zh_vocab_file.read_bytes())
    if spelling == "hard-link":
        os.link(vocab, data / "v.txt")
    vocab_arg = {
        "direct": vocab,
        "double-slash": f"{data}//out_text_document.idx",
        "dot-dot": f"{data}/../data/out_text_document.idx",
        "symlinked-folder": tmp_path / "link" / "out_text_document.idx",
        "hard-link": data / "v.txt",
    }[spelling]
    corpus = write_lines(tmp_path / "c.txt", lines[:5])
    with pytest.raises(ConfigError) as error:
        preprocess(config(tmp_path, vocab_arg, [corpus], output_prefix=str(data / "out"), overwrite=True))
    assert str(error.value).startswith(f"--output-prefix {data}/out_text_document.idx is --vocab-file {vocab_arg}")
    assert vocab.read_bytes() == zh_vocab_file.read_bytes()


@pytest.mark.parametrize("prefix", ["", "folder", "folder/"])
def test_an_output_prefix_that_is_empty_or_a_folder_is_refused(tmp_path, zh_vocab_file, lines, prefix):
    (tmp_path / "folder").mkdir()
    corpus = write_lines(tmp_path / "c.txt", lines[:5])
    output = str(tmp_path / prefix) if prefix else ""
    with pytest.raises(ConfigError) as error:
        preprocess(config(tmp_path, zh_vocab_file, [corpus], output_prefix=output))
    if prefix:
        assert str(error.value) == (
            f"--output-prefix {output!r} names a directory; give a path prefix for the files it writes "
            f"(PREFIX_{{key}}_document.bin/.idx/.meta.json), e.g. --output-prefix {tmp_path}/folder/corpus"
        )
    else:
        assert "--output-prefix must be a path prefix such as data/corpus, not empty, got ''" in str(error.value)
    assert os.listdir(tmp_path / "folder") == [] and not list(tmp_path.glob("_text_document*"))


@pytest.mark.parametrize("chunk_mb", ["0", "-1", "nan"])
def test_chunk_mb_must_be_positive(chunk_mb):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from preprocess_data import main
    finally:
        sys.path.remove(str(REPO / "tools"))
    with pytest.raises(ConfigError, match=f"--chunk-mb must be a positive number, got {float(chunk_mb)}"):
        main(["--input", "a.txt", "--output-prefix", "out", "--vocab-file", "v.txt", "--chunk-mb", chunk_mb])


@pytest.mark.integration
def test_the_tool_refuses_an_existing_dataset_and_replaces_it_with_overwrite(tmp_path, zh_vocab_file, zh_corpus_file):
    """The case as reproduced: 2,500 documents silently became 50."""
    small = write_lines(tmp_path / "small.txt", zh_corpus_file.read_text(encoding="utf-8").split("\n")[:50])
    common = ["--output-prefix", tmp_path / "out", "--vocab-file", zh_vocab_file, "--workers", "1"]
    run_tool("--input", zh_corpus_file, *common)
    before = dataset_files(tmp_path / "out_text_document")
    result = run_tool("--input", small, *common, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: output {tmp_path}/out_text_document.bin {EXISTS}"
    assert dataset_files(tmp_path / "out_text_document") == before
    assert read_metadata(tmp_path / "out_text_document")["documents"] == 2500
    run_tool("--input", small, *common, "--overwrite")
    assert read_metadata(tmp_path / "out_text_document")["documents"] == 50


# ------------------------------------------------------------------------------------ changing inputs


def change(path: Path, how: str) -> None:
    """Change `path` the way a writer would while it is being read."""
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    if how == "append":
        with open(path, "ab") as f:
            f.write("追加的一行\n".encode() * 100)
    elif how == "truncate":
        os.truncate(path, size // 2)
    elif how == "replace":  # a new file renamed over it: the same size, even the same time
        new = path.with_name("new")
        new.write_bytes(path.read_bytes()[::-1])
        os.utime(new, ns=(mtime, mtime))
        os.replace(new, path)
    elif how == "rewrite":  # in place, same size: only the modification time tells
        data = path.read_bytes()
        path.write_bytes(data[size // 2 :] + data[: size // 2])
        os.utime(path, ns=(mtime + 1_000_000_000, mtime + 1_000_000_000))
    elif how == "delete":
        path.unlink()


WHAT_CHANGED = {
    "append": r"\d[\d,]* bytes when listed, \d[\d,]* after",
    "truncate": r"\d[\d,]* bytes when listed, \d[\d,]* after",
    "replace": "replaced by another file",
    "rewrite": "modified, same size",
    "delete": "deleted",
}


@pytest.mark.parametrize("how", list(WHAT_CHANGED))
@pytest.mark.parametrize("kind", ["txt", "txt.gz", "zip"])
def test_an_input_that_changes_while_it_is_read_stops_the_run(tmp_path, zh_vocab_file, lines, monkeypatch, how, kind):
    """Before: exit 0 with part of the file, or two versions of it, and a .meta.json with the old size."""
    import gzip

    data = "".join(t + "\n" for t in lines * 3).encode()
    path = tmp_path / f"corpus.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:  # stored: reading goes on from the bytes on disk
            archive.writestr("docs/a.txt", data)
            archive.writestr("docs/b.txt", data)
    else:
        path.write_bytes(gzip.compress(data) if kind == "txt.gz" else data)
    original = ResultWriter.add
    calls = []

    def change_after_first_chunk(self, result):
        calls.append(1)
        if len(calls) == 1:
            change(path, how)
        original(self, result)

    monkeypatch.setattr(ResultWriter, "add", change_after_first_chunk)
    with pytest.raises(DataFormatError) as error:
        preprocess(config(tmp_path, zh_vocab_file, [path], chunk_bytes=16 << 10))
    message = str(error.value)
    if kind == "txt" or how in ("replace", "delete"):  # the open file reads on: the stamps tell
        assert message.startswith(f"{path}: changed while it was read (")
        assert re.search(WHAT_CHANGED[how], message), message
        assert message.endswith("part of it or of two versions; run again once nothing writes to it")
    else:  # bytes changed under a decompressor: it may fail first, naming the file as well
        assert message.startswith(f"{path}"), message
        assert re.search("changed while it was read|cannot be read to the end", message), message
    assert outputs_in(tmp_path) == []


# ---------------------------------------------------------------------------------- what is skipped


def write_tar_with_junk(path: Path, data: bytes) -> None:
    with tarfile.open(path, "w") as archive:

        def add(name: str, payload: bytes | None = None, **kind) -> None:
            info = tarfile.TarInfo(name)
            for key, value in kind.items():
                setattr(info, key, value)
            info.size = len(payload or b"")
            archive.addfile(info, io.BytesIO(payload) if payload else None)

        add("docs/a.txt", data)
        add("../escape.txt", data)
        add("/absolute.txt", data)
        add("docs/.hidden.txt", data)
        add("__MACOSX/docs/._a.txt", b"\x00\x05\x16\x07")
        add("docs/empty.txt", b"")
        add("docs/hard.txt", type=tarfile.LNKTYPE, linkname="docs/a.txt")
        add("docs/soft.txt", type=tarfile.SYMTYPE, linkname="a.txt")
        add("docs/fifo", type=tarfile.FIFOTYPE)


def test_skipped_members_and_files_are_logged_with_why_and_counted(tmp_path, zh_vocab_file, bert, lines, caplog):
    data = "".join(t + "\n" for t in lines[:10]).encode()
    write_tar_with_junk(tmp_path / "a.tar", data)
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as archive:
        archive.writestr("b.txt", data)
        link = zipfile.ZipInfo("link.txt")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "b.txt")
        archive.writestr(".DS_Store", b"\x00\x00\x00\x01Bud1")
    folder = tmp_path / "folder"
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "objects" / "x").write_bytes(b"git object")
    (folder / ".cache.txt").write_bytes(data)
    (folder / "c.txt").write_bytes(data)
    (folder / "dangling.txt").symlink_to(tmp_path / "missing")
    os.mkfifo(folder / "pipe")
    inputs = [tmp_path / "a.tar", tmp_path / "b.zip", folder]
    with caplog.at_level(logging.INFO, logger="megatron_zh"):
        stats = preprocess(config(tmp_path, zh_vocab_file, inputs))
    expected = [  # what the folder walk leaves out first, then each archive's members in name order
        ("folder/.cache.txt", "a dot file (hidden)"),
        ("folder/.git", "a dot directory (hidden), not walked"),
        ("folder/dangling.txt", "not a regular file (a broken link, a pipe or a socket)"),
        ("folder/pipe", "not a regular file (a broken link, a pipe or a socket)"),
        ("a.tar:../escape.txt", "its path leads out of the archive (absolute, or through ..)"),
        ("a.tar:/absolute.txt", "its path leads out of the archive (absolute, or through ..)"),
        ("a.tar:__MACOSX/docs/._a.txt", "a macOS resource fork (__MACOSX)"),
        ("a.tar:docs/.hidden.txt", "a dot file (hidden)"),
        ("a.tar:docs/empty.txt", "empty"),
        ("a.tar:docs/fifo", "not a regular file (a device or a pipe)"),
        ("a.tar:docs/hard.txt", "a hard link to docs/a.txt (the same bytes as that member)"),
        ("a.tar:docs/soft.txt", "a symbolic link to a.txt"),
        ("b.zip:.DS_Store", "a dot file (hidden)"),
        ("b.zip:link.txt", "a symbolic link (its bytes are the path it points to)"),
    ]
    logged = [r.getMessage() for r in caplog.records if r.getMessage().endswith("; skipped")]
    assert logged == [f"{tmp_path}/{label}: {reason}; skipped" for label, reason in expected]
    assert documents_of(tmp_path / "out_text_document") == framed(bert, lines[:10] * 3)
    assert stats.skipped_inputs == len(expected)
    meta = read_metadata(tmp_path / "out_text_document")
    assert meta["skipped_inputs"] == len(expected)
    assert [(e["path"] + (":" + e["member"] if "member" in e else ""), e["reason"]) for e in meta["skipped"]] == [
        (f"{tmp_path}/{label}", reason) for label, reason in expected
    ]
    done = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("done:"))
    assert f"{len(expected)} inputs skipped" in done


def test_a_tar_of_nothing_but_links_says_what_was_skipped(tmp_path, zh_vocab_file):
    """Before: '--num-shards 1 is more than the 0 input units'."""
    with tarfile.open(tmp_path / "links.tar", "w") as archive:
        for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/data/corpus.txt"
            archive.addfile(info)
    with pytest.raises(DataFormatError) as error:
        preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "links.tar"]))
    tar = tmp_path / "links.tar"
    assert str(error.value) == (
        f"nothing to read in --input {tar}: every file and archive member was skipped ({tar}:a.txt: a symbolic "
        f"link to /data/corpus.txt; {tar}:b.txt: a symbolic link to /data/corpus.txt; {tar}:c.txt: a symbolic link "
        "to /data/corpus.txt; and 1 more)"
    )
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".only.txt").write_text("x\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"was skipped \(.*hidden/.only.txt: a dot file \(hidden\)\)"):
        preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "hidden"]))


def test_a_file_named_twice_is_read_once(tmp_path, zh_vocab_file, bert, lines, caplog, monkeypatch):
    folder = tmp_path / "folder"
    folder.mkdir()
    a, b = write_lines(folder / "a.txt", lines[:4]), write_lines(folder / "b.txt", lines[4:7])
    (tmp_path / "link.txt").symlink_to(a)
    os.link(b, tmp_path / "hard.txt")
    inputs = [a, f"{folder}/./a.txt", folder, tmp_path / "link.txt", str(tmp_path / "fold*" / "*.txt"), "hard.txt"]
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="megatron_zh"):
        stats = preprocess(config(tmp_path, zh_vocab_file, inputs))
    assert documents_of(tmp_path / "out_text_document") == framed(bert, lines[:7])
    read_once = [r.getMessage() for r in caplog.records if "which is read once" in r.getMessage()]
    assert read_once == [
        f"{a}: the same file as {a}, which is read once; skipped",  # {folder}/./a.txt, as Path spells it
        f"{a}: the same file as {a}, which is read once; skipped",
        f"{tmp_path}/link.txt: the same file as {a}, which is read once; skipped",
        f"{a}: the same file as {a}, which is read once; skipped",
        f"{b}: the same file as {b}, which is read once; skipped",
        f"hard.txt: the same file as {b}, which is read once; skipped",
    ]
    assert stats.skipped_inputs == 6


def test_an_earlier_runs_dataset_in_an_input_folder_is_skipped_and_refused_by_name(tmp_path, zh_vocab_file, lines):
    """Before: the .idx was read as a corpus, with advice to convert it with iconv."""
    folder = tmp_path / "folder"
    folder.mkdir()
    write_lines(folder / "a.txt", lines[:20])
    preprocess(config(tmp_path, zh_vocab_file, [folder], output_prefix=str(folder / "run1")))
    stats = preprocess(config(tmp_path, zh_vocab_file, [folder], output_prefix=str(folder / "run2")))
    assert stats.documents["text"] == 20 and stats.skipped_inputs == 3
    assert documents_of(folder / "run2_text_document") == documents_of(folder / "run1_text_document")
    assert stats.skipped_inputs == len(read_metadata(folder / "run2_text_document")["skipped"])
    for name in ("run1_text_document.idx", "run1_text_document.bin", "run1_text_document.meta.json"):
        with pytest.raises(ConfigError) as error:
            preprocess(config(tmp_path, zh_vocab_file, [folder / name], output_prefix=str(tmp_path / "x")))
        assert str(error.value) == (
            f"--input {folder / name}: a preprocessed dataset's file (PREFIX.bin/.idx/.meta.json beside a Megatron "
            "PREFIX.idx), not a corpus; leave it out (tools/merge_datasets.py joins datasets)"
        )
