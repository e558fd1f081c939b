"""What becomes [UNK]: the tally encode_batch_flat keeps, checked against known counts, against the
backend's own [UNK] offsets on the real corpus, and after documents are dropped."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from megatron_zh.text.tokenizer import BertChineseTokenizer
from megatron_zh.text.unknown_tokens import CUT, MAX_SPAN, UnkReport, UnkTally


@pytest.fixture(scope="module")
def tokenizer(zh_vocab_file):
    return BertChineseTokenizer(zh_vocab_file)


def tally(tokenizer, texts) -> tuple[np.ndarray, np.ndarray, UnkTally]:
    out: list[UnkTally] = []
    ids, lengths = tokenizer.encode_batch_flat(texts, out)
    assert len(out) == 1
    return ids, lengths, out[0]


def per_document(t: UnkTally) -> dict[tuple[int, str], int]:
    return {(int(d), s): int(c) for d, s, c in zip(t.documents, t.spans, t.counts)}


def test_known_counts(tokenizer):
    long_word = "x" * 150  # over WordPiece's 100 characters: one [UNK] for the whole word
    texts = [
        "他说：“你好”……",  # curly quotes and ellipses: the vocab lacks them
        "",
        "没有未知字符的句子。",
        "—Cœur— and [UNK] 坜",  # dash, a Latin word with œ, the literal token, a rare ideograph
        f"url {long_word} end",
        "საქართველო 坜坜",
    ]
    ids, lengths, t = tally(tokenizer, texts)
    assert t.total == int((ids == tokenizer.unk).sum()) == 13
    assert (
        per_document(t)
        == {
            (0, "“"): 1,
            (0, "”"): 1,
            (0, "…"): 2,
            (3, "—"): 2,
            (3, "Cœur"): 1,  # the span is the text as written
            (3, "[UNK]"): 1,
            (3, "坜"): 1,
            (4, long_word[: MAX_SPAN - 1] + CUT): 1,
            (5, "საქართველო"): 1,
            (5, "坜"): 2,
        }
    )


def test_a_batch_without_unknowns_costs_nothing_to_report(tokenizer):
    _, _, t = tally(tokenizer, ["一切正常。", "all known words"])
    assert t.total == 0 and t.spans == []
    _, _, t = tally(tokenizer, [])
    assert t.total == 0


def test_select_keeps_the_documents_written(tokenizer):
    _, _, t = tally(tokenizer, ["“甲”", "乙", "—丙—", "…"])
    kept = t.select(np.array([False, True, True, True]))
    assert per_document(kept) == {(1, "—"): 2, (2, "…"): 1}
    assert per_document(kept.select(np.array([False, True, False]))) == {(0, "—"): 2}


def test_real_corpus_against_backend_offsets(tokenizer, zh_corpus_file):
    """Document by document, the spans are the text at the offsets of the backend's own [UNK] tokens."""
    documents = [line for line in zh_corpus_file.read_text(encoding="utf-8").split("\n") if line]
    ids, lengths, t = tally(tokenizer, documents)
    expected: collections.Counter[tuple[int, str]] = collections.Counter()
    for d, encoding in enumerate(tokenizer.backend.encode_batch(documents, add_special_tokens=False)):
        for token, (start, end) in zip(encoding.ids, encoding.offsets):
            if token == tokenizer.unk:
                span = documents[d][start:end]
                expected[d, span if len(span) <= MAX_SPAN else span[: MAX_SPAN - 1] + CUT] += 1
    assert per_document(t) == dict(expected)
    report = UnkReport()
    report.add(t, int(lengths.sum()))
    # The figures for this sample: 0.65% of the tokens, mostly punctuation the vocab lacks.
    assert (report.unk, report.tokens) == (4270, 657925)
    assert f"{100 * report.share:.2f}%" == "0.65%"
    assert report.top(4) == [["“", 1738], ["”", 1692], ["—", 309], ["…", 282]]
    assert report.headline().startswith("[UNK] 0.65% (4,270: “ 1,738, ” 1,692, — 309, … 282, – 49)")


def test_report_merges(tokenizer):
    a, b = UnkReport(), UnkReport()
    a.add(tally(tokenizer, ["“甲”"])[2], 3)
    b.add(tally(tokenizer, ["“乙"])[2], 2)
    a.merge(b)
    assert (a.tokens, a.unk, a.spans) == (5, 3, {"“": 2, "”": 1})
    assert a.metadata(1) == {"tokens": 5, "unk": 3, "unk_share": 0.6, "distinct": 2, "top": [["“", 2]]}
    assert UnkReport().headline() == "[UNK] 0%"
