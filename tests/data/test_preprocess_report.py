"""What preprocessing reports about its data: the [UNK] share and the characters behind it (log line and
.meta.json, in total and by input), what --normalize would remove, and --normalize itself."""

from __future__ import annotations

import logging
import zipfile

import pytest

from megatron_zh.data.indexed.dataset import IndexedDataset, read_metadata
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.pipeline import preprocess
from megatron_zh.errors import ConfigError
from megatron_zh.text.tokenizer import BertChineseTokenizer

# Known counts, per document: “ ” 1 each and … 2; none; — 4; none; 坜 1.
ZIP_MEMBERS = {"news/a.txt": "他说：“你好”……\n今天天气很好。\n", "news/b.txt": "——破折号——\n"}
PLAIN = "没有未知字符。\n罕见字坜。\n"


@pytest.fixture(scope="module")
def bert(zh_vocab_file):
    from transformers import BertTokenizer

    return BertTokenizer(str(zh_vocab_file))


def make_inputs(folder):
    archive = folder / "news.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, text in ZIP_MEMBERS.items():
            z.writestr(name, text)
    plain = folder / "plain.txt"
    plain.write_text(PLAIN, encoding="utf-8")
    return [archive, plain]


def run(tmp_path, vocab, inputs, **overrides):
    values = dict(inputs=[str(p) for p in inputs], output_prefix=str(tmp_path / "out"), vocab_file=str(vocab))
    stats = preprocess(PreprocessConfig(**{**values, "progress": False, **overrides}))
    prefix = stats.outputs["text"]
    return stats, prefix, read_metadata(prefix)


def test_report_in_total_and_by_input(tmp_path, zh_vocab_file, caplog):
    inputs = make_inputs(tmp_path)
    with caplog.at_level(logging.INFO, logger="megatron_zh"):
        stats, prefix, meta = run(tmp_path, zh_vocab_file, inputs, workers=2)
    body = sum(len(d) - 2 for d in (IndexedDataset(prefix)[i] for i in range(5)))
    unk = meta["unk"]
    assert (unk["unk"], unk["tokens"], unk["distinct"]) == (9, body, 5)
    assert unk["top"] == [["—", 4], ["…", 2], ["“", 1], ["”", 1], ["坜", 1]]
    assert unk["unk_share"] == round(9 / body, 6) and stats.unk["text"].unk == 9
    assert meta["normalization"] == "none"
    # Everything but the rare ideograph is punctuation the vocab has an equivalent of.
    assert unk["normalize_would_remove"] == {"punctuation": round(8 / 9, 6), "compatibility": 0.0}

    # Every member in .meta.json, each with its counts; the summary has one entry per input.
    assert [(i.get("member"), i["documents"], i["unk"]) for i in meta["inputs"]] == [
        ("news/a.txt", 2, 4),
        ("news/b.txt", 1, 4),
        (None, 2, 1),
    ]
    archive, plain = meta["by_input"]
    assert (archive["path"], archive["members"], archive["documents"], archive["unk"]) == (str(inputs[0]), 2, 3, 8)
    assert archive["bytes"] == sum(len(t.encode()) for t in ZIP_MEMBERS.values())
    assert archive["tokens"] == sum(i["tokens"] for i in meta["inputs"][:2])
    assert (plain["members"], plain["documents"], plain["top"]) == (0, 2, [["坜", 1]])

    lines = [r.getMessage() for r in caplog.records]
    done = next(line for line in lines if line.startswith("done:"))
    assert f"[UNK] {100 * 9 / body:.2f}% (9: — 4, … 2, “ 1, ” 1, 坜 1)" in done
    assert "of these [UNK] tokens, would become known tokens with: --normalize punctuation 88.9%" in lines
    assert any(
        line.startswith("  news.zip: 2 members, ") and line.endswith(f"[UNK] {archive['unk_share']:.2%}")
        for line in lines
    )
    assert any(line.startswith("  plain.txt: 1 file, ") for line in lines)


def test_dropped_documents_leave_the_count(tmp_path, zh_vocab_file):
    """Duplicates and short documents are not in the dataset, so their [UNK]s are not in the report."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("“重复的文档”\n“重复的文档”\n—\n坜坜坜坜坜\n", encoding="utf-8")
    _, _, meta = run(tmp_path, zh_vocab_file, [corpus], dedup=True, min_doc_chars=2)
    assert meta["unk"]["top"] == [["坜", 5], ["“", 1], ["”", 1]]
    assert meta["inputs"][0]["documents"] == 2 and meta["dropped_duplicate"] == 1 and meta["dropped_short"] == 1


def test_normalize_punctuation(tmp_path, zh_vocab_file, bert):
    inputs = make_inputs(tmp_path)
    _, prefix, meta = run(tmp_path, zh_vocab_file, inputs, normalize="punctuation")
    tokenizer = BertChineseTokenizer(zh_vocab_file, normalization="punctuation")
    assert meta["normalization"] == tokenizer.normalization.identity
    assert meta["normalization"].startswith("vocab-equivalents/1 punctuation sha256:")
    assert meta["unk"]["top"] == [["坜", 1]] and meta["unk"]["normalize_would_remove"] == {"compatibility": 0.0}
    dataset = IndexedDataset(prefix)
    first = dataset[0].tolist()
    assert first[1:-1] == bert('他说："你好"......', add_special_tokens=False)["input_ids"]


def test_default_ids_are_bert_tokenizers(tmp_path, zh_vocab_file, bert):
    inputs = make_inputs(tmp_path)
    _, prefix, _ = run(tmp_path, zh_vocab_file, inputs)
    texts = [line for t in [*ZIP_MEMBERS.values(), PLAIN] for line in t.splitlines()]
    dataset = IndexedDataset(prefix)
    assert [dataset[i].tolist()[1:-1] for i in range(len(dataset))] == bert(texts, add_special_tokens=False)[
        "input_ids"
    ]


def test_bad_rule_set_is_one_clear_error(tmp_path, zh_vocab_file):
    with pytest.raises(ConfigError, match="normalize must be 'none' or a comma-separated list of punctuation"):
        PreprocessConfig(inputs=["x"], output_prefix="o", vocab_file=str(zh_vocab_file), normalize="quotes")
