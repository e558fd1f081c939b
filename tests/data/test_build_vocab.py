"""tools/build_vocab.py: a WordPiece vocab trained on the real corpus loads in transformers.BertTokenizer
with BERT-Chinese's special ids, and our tokenizer agrees with it on the whole corpus."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
from repo_paths import REPO_ROOT as REPO

from megatron_zh.data.preprocess.vocab_builder import VocabConfig, train_vocab
from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.text.tokenizer import BertChineseTokenizer, read_vocab


@pytest.mark.integration
def test_trained_vocab_on_real_corpus(tmp_path, zh_corpus_file):
    from transformers import BertTokenizer

    output = tmp_path / "vocab.txt"
    result = subprocess.run(
        [
            sys.executable,
            "tools/build_vocab.py",
            "--input",
            str(zh_corpus_file),
            "--output",
            str(output),
            "--vocab-size",
            "6000",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    tokens = read_vocab(output)  # no duplicates, specials present
    assert len(tokens) == 6000
    assert tokens[:2] == ["[PAD]", "[unused1]"] and tokens[99] == "[unused99]"
    assert tokens[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert any(t.startswith("##") for t in tokens) and "中" in tokens

    reference = BertTokenizer(str(output))
    ours = BertChineseTokenizer(output)
    assert (ours.pad, ours.unk, ours.cls, ours.sep, ours.mask) == (0, 100, 101, 102, 103)
    assert (reference.unk_token_id, reference.cls_token_id, reference.sep_token_id) == (100, 101, 102)
    documents = [line for line in zh_corpus_file.read_text(encoding="utf-8").split("\n") if line]
    ids = ours.encode_batch(documents)
    assert ids == reference(documents, add_special_tokens=False)["input_ids"]
    total = sum(map(len, ids))
    unknown = sum(doc.count(ours.unk) for doc in ids)
    assert unknown / total < 0.001, f"{unknown} of {total} tokens are [UNK]"  # every character was learned
    # Words are split into learned pieces: fewer tokens than characters would give.
    assert total < sum(len(d.replace(" ", "")) for d in documents)


def test_compact_layout_and_jsonl(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        '{"text": "hello world 你好"}\n{"text": "hello there"}\nnot json\n{"other": 1}\n'
        '{"text": "鲸", "text": "鳄"}\n',  # a key written twice: an unreadable line, neither text is learnt
        encoding="utf-8",
    )
    tokens = train_vocab(
        VocabConfig(
            inputs=[str(corpus)], output=str(tmp_path / "v.txt"), vocab_size=40, layout="compact", min_frequency=1
        )
    )
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "hello" in tokens and "你" in tokens
    assert "鲸" not in tokens and "鳄" not in tokens
    assert BertChineseTokenizer(tmp_path / "v.txt").encode("hello 你好") == [
        tokens.index(t) for t in ("hello", "你", "好")
    ]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="reserves 104 ids"):
        VocabConfig(inputs=["x"], output=str(tmp_path / "v.txt"), vocab_size=100)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no text found"):
        train_vocab(VocabConfig(inputs=[str(empty)], output=str(tmp_path / "v.txt"), vocab_size=500))
    assert not (tmp_path / "v.txt").exists()


def test_an_existing_vocab_is_refused_unless_overwrite(tmp_path, caplog):
    """A vocab is what datasets and checkpoints are fingerprinted against: it is not replaced without asking."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world 你好\nhello there 世界\n", encoding="utf-8")
    output = tmp_path / "out" / "v.txt"
    output.parent.mkdir()
    output.write_text("my vocab\n", encoding="utf-8")
    config = dict(inputs=[str(tmp_path / "*.txt"), str(corpus)], output=str(output), vocab_size=40, layout="compact")
    with pytest.raises(ConfigError) as error:
        train_vocab(VocabConfig(**config, min_frequency=1))
    assert str(error.value) == (
        f"output {output} exists; pass --overwrite to replace it (it is replaced only after the new one is complete)"
    )
    assert output.read_text(encoding="utf-8") == "my vocab\n"
    with caplog.at_level("WARNING", logger="megatron_zh"):
        tokens = train_vocab(VocabConfig(**config, min_frequency=1, overwrite=True))
    assert read_vocab(output) == tokens and "你" in tokens
    assert f"{corpus}: the same file as {corpus}, which is read once; skipped" in caplog.messages


# ------------------------------------------------------------- inputs read as preprocessing reads them


@pytest.fixture(scope="module")
def text(zh_corpus_file) -> str:
    """300 real CLUECorpusSmall documents, one per line."""
    return "".join(line + "\n" for line in zh_corpus_file.read_text(encoding="utf-8").split("\n")[:300])


def refused(tmp_path: Path, path: Path) -> str:
    """The DataFormatError build_vocab gives for `path` (the tool prints it after "error: "); no vocab written."""
    output = tmp_path / "v.txt"
    with pytest.raises(DataFormatError) as error:
        train_vocab(VocabConfig(inputs=[str(path)], output=str(output), vocab_size=500))
    assert not output.exists()
    return str(error.value)


def test_a_corpus_in_another_encoding_is_named_with_the_command_that_converts_it(tmp_path, text):
    """Before: `no text found` for a GBK corpus, and exit 0 on the ASCII half of a half-ASCII one."""
    (tmp_path / "gbk.txt").write_bytes(text.encode("gbk"))
    assert refused(tmp_path, tmp_path / "gbk.txt") == (
        f"{tmp_path}/gbk.txt: GB18030 (GBK, GB2312) text, not UTF-8; convert it first: "
        f"iconv -f GB18030 -t UTF-8 {tmp_path}/gbk.txt > {tmp_path}/gbk.utf8.txt"
    )
    # ASCII first, far past what the first-bytes check sees: the whole file's tally decides, once it is read.
    ascii_first = "".join(f"line {i}: plain ASCII text\n" for i in range(6000)) + text
    (tmp_path / "late.txt").write_bytes(ascii_first.encode("gbk"))
    assert refused(tmp_path, tmp_path / "late.txt") == (
        f"{tmp_path}/late.txt: GB18030 (GBK, GB2312) text, not UTF-8 (300 of its 300 lines with non-ASCII text are "
        f"not UTF-8); convert it first: iconv -f GB18030 -t UTF-8 {tmp_path}/late.txt > {tmp_path}/late.utf8.txt"
    )


def test_a_corrupt_compressed_corpus_is_named_as_such(tmp_path, text):
    """Before: `no text found in [...]`."""
    packed = gzip.compress((text * 3).encode())
    (tmp_path / "bad.txt.gz").write_bytes(packed[:100] + bytes(50) + packed[150:])
    assert refused(tmp_path, tmp_path / "bad.txt.gz").startswith(
        f"{tmp_path}/bad.txt.gz: cannot be read to the end (Error -3 while decompressing data"
    )
    # A whole one gives the vocab its text gives.
    (tmp_path / "good.txt.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "good.txt").write_text(text, encoding="utf-8")
    vocabs = [
        train_vocab(VocabConfig(inputs=[str(tmp_path / name)], output=str(tmp_path / f"{name}.vocab"), vocab_size=500))
        for name in ("good.txt.gz", "good.txt")
    ]
    assert vocabs[0] == vocabs[1] and len(vocabs[0]) == 500
