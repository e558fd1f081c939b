"""The opt-in normalisation: derived from the vocab (the shipped table is the derivation), named by
identity, off by default, and on the real corpus it removes over 80% of the [UNK]s while every other
token stays BertTokenizer's."""

from __future__ import annotations

import json
import unicodedata

import pytest

from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.text.normalization import (
    NAME,
    NONE,
    SHIPPED_TABLE,
    EquivalenceTable,
    Normalization,
    derive_table,
    fingerprint_of_mapping,
    parse_rules,
    read_table_file,
    write_table_file,
)
from megatron_zh.text.tokenizer import BertChineseTokenizer


@pytest.fixture(scope="module")
def plain(zh_vocab_file):
    return BertChineseTokenizer(zh_vocab_file)


@pytest.fixture(scope="module")
def punctuation(zh_vocab_file):
    return BertChineseTokenizer(zh_vocab_file, normalization="punctuation")


@pytest.fixture(scope="module")
def reference(zh_vocab_file):
    from transformers import BertTokenizer

    return BertTokenizer(str(zh_vocab_file))


def test_the_entries_that_matter(punctuation):
    mapping = punctuation.normalization.mapping
    assert {c: mapping[c] for c in "“”‘’—–…"} == {
        "“": '"',
        "”": '"',
        "‘": "'",
        "’": "'",
        "—": "-",
        "–": "-",
        "…": "...",
    }
    # Characters the vocab has stay: full-width punctuation (its own ids), ASCII, ideographs.
    assert not set("，。：（）！？「」《》,.:\"'-中") & set(mapping)
    assert len(mapping) == 63 and all(unicodedata.category(c).startswith("P") for c in mapping)
    both = punctuation.equivalents().select("punctuation,compatibility")
    assert len(both.mapping) == 2546 and both.mapping["㎏"] == "kg" and both.mapping["ﬁ"] == "fi"


def test_shipped_table_is_the_derivation(plain):
    """The data file is what derive_table gives for the default vocab (on the Unicode version it records)."""
    shipped = json.loads(SHIPPED_TABLE.read_text(encoding="utf-8"))
    assert shipped["vocab_fingerprint"] == plain.fingerprint and shipped["name"] == NAME
    if shipped["unicode"] != unicodedata.unidata_version:
        pytest.skip(f"this Python has Unicode {unicodedata.unidata_version}, the table {shipped['unicode']}")
    derived = derive_table(plain.backend, plain.unk)
    assert {s: (t, r) for s, t, r in shipped["entries"]} == derived, (
        "rebuild the table: write_table_file(SHIPPED_TABLE, EquivalenceTable(derive_table(...), ...))"
    )


def test_identity(plain, punctuation):
    normalization = punctuation.normalization
    assert normalization.identity == f"{NAME} punctuation {fingerprint_of_mapping(normalization.mapping)}"
    assert plain.normalization.identity == NONE and not plain.normalization.enabled
    # A recorded identity rebuilds the same normalisation; a table that maps otherwise is refused.
    assert plain.equivalents().select(normalization.identity).mapping == normalization.mapping
    with pytest.raises(DataFormatError, match="the data was normalised with .* preprocess the data again"):
        plain.equivalents().select(f"{NAME} punctuation sha256:{'0' * 64}")


@pytest.mark.parametrize(
    "spec, rules",
    [
        ("none", ()),
        ("punctuation", ("punctuation",)),
        ("compatibility,punctuation", ("punctuation", "compatibility")),
        (f"{NAME} punctuation sha256:abc", ("punctuation",)),
    ],
)
def test_parse_rules(spec, rules):
    assert parse_rules(spec) == rules


@pytest.mark.parametrize("spec", ["quotes", "punctuation,", "", "None"])
def test_unknown_rules_are_refused(spec):
    with pytest.raises(ConfigError, match="--normalize .*unknown rule set"):
        parse_rules(spec)


def test_off_by_default_ids_are_bert_tokenizers(plain, reference, zh_corpus_file):
    documents = [line for line in zh_corpus_file.read_text(encoding="utf-8").split("\n") if line]
    assert plain.encode_batch(documents) == reference(documents, add_special_tokens=False)["input_ids"]


def test_on_the_real_corpus(plain, punctuation, reference, zh_corpus_file):
    """Share falls from 0.65% by over 80%; documents without [UNK] keep their ids; the rest are BertTokenizer's
    ids of the normalised text."""
    documents = [line for line in zh_corpus_file.read_text(encoding="utf-8").split("\n") if line]
    before, after = plain.encode_batch(documents), punctuation.encode_batch(documents)
    unk_before = sum(ids.count(plain.unk) for ids in before)
    unk_after = sum(ids.count(plain.unk) for ids in after)
    assert (unk_before, unk_after) == (4270, 164)
    assert unk_after <= 0.2 * unk_before
    clean = [i for i, ids in enumerate(before) if plain.unk not in ids]
    assert len(clean) == 2005 and all(before[i] == after[i] for i in clean)
    normalised = punctuation.normalization.apply(documents)
    assert after == reference(normalised, add_special_tokens=False)["input_ids"]


def test_apply(punctuation):
    apply = punctuation.normalization.apply
    assert apply(["他说：“好…”", "", "无", "——"]) == ['他说："好..."', "", "无", "--"]
    texts = ["没有要换的"]
    assert apply(texts) == texts and apply([]) == []


def test_tokenizers_normalizer_gives_the_same_ids(punctuation):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(punctuation.backend.to_str())
    backend.normalizer = punctuation.normalization.tokenizers_normalizer(backend.normalizer)
    text = "“引号”、‘单引号’、破折号——和省略号……以及 en–dash"
    assert backend.encode(text, add_special_tokens=False).ids == punctuation.encode(text)


def test_another_vocab_derives_its_own_table(tmp_path, zh_vocab_file):
    """A vocab with “ and ” of its own: they are not mapped, so its table (and identity) differ."""
    tokens = zh_vocab_file.read_text(encoding="utf-8").split("\n")
    tokens[tokens.index("[unused1]")] = "“"
    tokens[tokens.index("[unused2]")] = "”"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tokens), encoding="utf-8")
    own = BertChineseTokenizer(vocab, normalization="punctuation")
    assert "“" not in own.normalization.mapping and own.normalization.mapping["—"] == "-"
    assert own.equivalents().unicode_version == unicodedata.unidata_version
    assert own.encode("“好”") == [tokens.index("“"), tokens.index("好"), tokens.index("”")]


def test_write_table_file_round_trip(tmp_path):
    table = EquivalenceTable({"“": ('"', "punctuation"), "①": ("1", "compatibility")}, "sha256:x", True, "14.0.0")
    write_table_file(tmp_path / "t.json", table)
    assert read_table_file(tmp_path / "t.json") == table
    assert Normalization({"“": '"'}, ["punctuation"]).identity.startswith(f"{NAME} punctuation sha256:")
