"""BertChineseTokenizer: ids identical to transformers.BertTokenizer on the real corpus, on inputs built
to break it, on every code point of the BMP and the CJK extension plane, and on seeded random text."""

from __future__ import annotations

import hashlib
import shutil
import warnings

import numpy as np
import pytest

from megatron_zh.errors import CheckpointError, DataFormatError
from megatron_zh.text.tokenizer import BertChineseTokenizer, check_fingerprint, read_vocab, vocab_fingerprint


@pytest.fixture(scope="module")
def ours(zh_vocab_file):
    return BertChineseTokenizer(zh_vocab_file)


@pytest.fixture(scope="module")
def reference(zh_vocab_file):
    """transformers.BertTokenizer (the contract's reference; a `tokenizers` pipeline in transformers 5)."""
    from transformers import BertTokenizer

    return BertTokenizer(str(zh_vocab_file))


@pytest.fixture(scope="module")
def python_bert(zh_vocab_file):
    """The original pure-Python BERT algorithm (transformers 4's BertTokenizer, UER-py, Google's BERT)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
    return BertTokenizerLegacy(str(zh_vocab_file))


def reference_ids(reference, texts: list[str]) -> list[list[int]]:
    return reference(texts, add_special_tokens=False)["input_ids"]


def corpus_documents(path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]


# Inputs built to break a hand-made pipeline; both reference implementations agree on all of them.
CONSTRUCTED = [
    "",
    "我爱北京天安门。",
    "2023年GPT-4发布，OpenAI的CEO是Sam Altman；价格$20/月（约145元）。",
    "ＨＥＬＬＯ，ｗｏｒｌｄ！１２３４５ ＡＢＣ　全角空格",  # full-width forms and U+3000
    "Café naïve Ångström façade Øresund ﬁle ǅ",  # accents, ligature, titlecase digraph
    "e\u0301 a\u0300\u0316 中\u0301文 \u0301开头",  # combining marks, also after an ideograph and alone
    "😀👍🏻 👨‍👩‍👧 🇨🇳 ❤️ 笑😂死",  # emoji, skin tone, ZWJ sequences, flags, variation selector
    "a\x00b\x01c\x1fd\x7fe\x9ff",  # NUL and other control characters
    "零\u200b宽\u200c字\u200d符\ufeff号\u2060x\u00ad",  # zero-width characters, soft hyphen
    "bad\ufffdbytes \ufffd\ufffd",  # U+FFFD
    "tab\there\nnew\rline\x0bvt\x0cff \u00a0nbsp\u2002en\u3000ideo\u2028ls\u2029ps\u1680ogham\u202fnnbsp\x85nel",
    "𠀀𠀁𪚥𫝀𬺰𰀀 \U0002a700\U0002b740 丽 豈 \U0002f800 \U00030000",  # CJK ext B-G, compatibility ideographs
    "x" * 100,  # exactly max_input_chars_per_word
    "y" * 101,  # one more: [UNK]
    "a" * 150 + " ok " + "中" * 150 + " " + "ab" * 60,  # long latin word -> [UNK]; ideographs are single words
    "[CLS] 你好 [SEP][MASK]x[PAD] [UNK] [sep] [MASK [ SEP ] [[CLS]]",  # special tokens written in the text
    "İstanbul ǰ ẞ straße Σ ΣΑ",  # special case mappings (a final Σ is a known divergence, below)
    "한국어 테스트 日本語のテキスト カタカナ ｶﾀｶﾅ",  # Hangul, kana, half-width kana
    "مرحبا بالعالم \u200f עברית \u202eRTL\u202c",  # RTL scripts and bidi controls
    "3.14159 1,000,000 10% 1e-5 0x1F ① ½ ² Ⅻ",  # numbers
    "https://example.com/a?b=c&d=e#frag user@mail.cn ## #tag ##x",  # URLs, the WordPiece prefix itself
    "\u0000\u0000",  # nothing but removed characters
    "   \t\n  ",  # nothing but whitespace
    "\U000f0000\U0010fffd \ue000",  # private use
    "naïve" * 30,  # a long word with accents (stripped before the length check)
    "ᄀ\u1161\u11a8 가각",  # conjoining jamo vs precomposed Hangul
]

# Where transformers.BertTokenizer (a `tokenizers` pipeline) and the original Python BERT algorithm
# disagree. We follow transformers.BertTokenizer, the contract and what the exported model loads with.
KNOWN_DIVERGENCES = {
    "final sigma": "ΟΔΟΣ",  # Python lower-cases a final Σ to ς; `tokenizers` always to σ
    "CJK extension E start": "\U0002b820\U0002b821",  # `tokenizers` starts its CJK range at U+2B920
    "unassigned code point": "a\u0378b",  # Python drops it (category Cn counts as control); `tokenizers` keeps [UNK]
    "Unicode 14 punctuation": "a\u2e5db",  # newer than the Unicode tables in `tokenizers`
}


def test_special_ids_and_vocab(ours, reference, zh_vocab_file):
    assert ours.vocab_size == 21128 == len(reference)
    assert (ours.pad, ours.unk, ours.cls, ours.sep, ours.mask) == (0, 100, 101, 102, 103)
    assert (ours.cls, ours.sep, ours.pad, ours.unk, ours.mask) == (
        reference.cls_token_id,
        reference.sep_token_id,
        reference.pad_token_id,
        reference.unk_token_id,
        reference.mask_token_id,
    )
    assert ours.eod == ours.sep
    tokens = read_vocab(zh_vocab_file)
    assert tokens[101] == "[CLS]" and tokens[343] == "\u2028"  # a token that str.splitlines() would break


def test_real_corpus_matches_bert_tokenizer(ours, reference, zh_corpus_file):
    documents = corpus_documents(zh_corpus_file)
    assert len(documents) == 2500
    expected = reference_ids(reference, documents)
    assert ours.encode_batch(documents) == expected
    ids, lengths = ours.encode_batch_flat(documents)
    assert ids.dtype == np.int32 and lengths.tolist() == [len(e) for e in expected]
    for i in range(0, 2500, 250):
        assert ours.encode(documents[i]) == expected[i]


def test_real_corpus_matches_original_python_bert(ours, python_bert, zh_corpus_file):
    documents = corpus_documents(zh_corpus_file)
    assert ours.encode_batch(documents) == [python_bert.encode(d, add_special_tokens=False) for d in documents]


@pytest.mark.parametrize("index", range(len(CONSTRUCTED)))
def test_constructed_inputs(ours, reference, python_bert, index):
    text = CONSTRUCTED[index]
    expected = reference.encode(text, add_special_tokens=False)
    assert ours.encode(text) == expected
    assert ours.encode_batch([text, text]) == [expected, expected]
    assert python_bert.encode(text, add_special_tokens=False) == expected


def test_constructed_inputs_in_one_batch(ours, reference):
    # Neighbours in a batch must not leak into each other (the batch is joined internally).
    assert ours.encode_batch(CONSTRUCTED) == reference_ids(reference, CONSTRUCTED)


@pytest.mark.parametrize("case", sorted(KNOWN_DIVERGENCES))
def test_known_divergences_follow_transformers(ours, reference, python_bert, case):
    text = KNOWN_DIVERGENCES[case]
    expected = reference.encode(text, add_special_tokens=False)
    assert python_bert.encode(text, add_special_tokens=False) != expected  # still a real divergence
    assert ours.encode(text) == expected


def test_long_document(ours, reference, zh_corpus_file):
    text = "\n".join(corpus_documents(zh_corpus_file)[:300])  # ~80k characters in one document
    assert len(text) > 50_000
    assert ours.encode(text) == reference.encode(text, add_special_tokens=False)


def _code_point_sweep(planes: list[range]) -> list[str]:
    texts = []
    for plane in planes:
        for cp in plane:
            if 0xD800 <= cp <= 0xDFFF:
                continue
            c = chr(cp)
            texts.append(f"a{c}b 中{c}{c}1 {c}\u0301x")
    return texts


def test_every_code_point_in_context(ours, reference):
    """Each character of the BMP (where the separator table works) and of plane 2 (CJK extensions) between letters,
    after an ideograph, doubled, before a combining mark; plus a stride through the other planes."""
    texts = _code_point_sweep([range(0, 0x10000), range(0x20000, 0x30000), range(0x10000, 0x110000, 97)])
    backend = reference.backend_tokenizer
    for start in range(0, len(texts), 40_000):
        batch = texts[start : start + 40_000]
        expected = [e.ids for e in backend.encode_batch_fast(batch, add_special_tokens=False)]
        got = ours.encode_batch(batch)
        if got != expected:
            bad = next(i for i, (g, e) in enumerate(zip(got, expected)) if g != e)
            pytest.fail(f"{batch[bad]!r}: ours {got[bad]} != BertTokenizer {expected[bad]}")


def test_random_unicode(ours, reference):
    """Seeded random strings mixing the kinds of characters that interact (hypothesis-style, fixed seed)."""
    rng = np.random.default_rng(20240601)
    pools = [
        "中文汉字测试的一是不了人我在有他这为之大来以个",
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        " \t\n\r\u3000\u00a0\u2028\u200b\ufeff\x00\ufffd\x85",
        ",.!?;:'\"()[]{}<>@#$%^&*-_=+/\\|`~，。！？；：“”‘’（）【】《》、…—·",
        "\u0301\u0300\u0308\u0327\u0316\u20dd\u0903\u093f",
        "ÀÉÎÕÜçñøåßΣσςİıǅﬁＡＢＣ１２３ｶﾀ가각ᄀ",
        "[CLS][SEP][MASK][PAD][UNK]##",
    ]
    texts = []
    for _ in range(4000):
        parts = []
        for _ in range(int(rng.integers(0, 40))):
            kind = rng.integers(0, len(pools) + 1)
            if kind == len(pools):  # any code point at all, assigned or not
                cp = int(rng.integers(0, 0x110000))
                parts.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "x")
            else:
                pool = pools[kind]
                start = int(rng.integers(0, len(pool)))
                parts.append(pool[start : start + int(rng.integers(1, 6))])
        texts.append("".join(parts))
    assert ours.encode_batch(texts) == reference_ids(reference, texts)


def test_cased_vocab_option(zh_vocab_file):
    from transformers import BertTokenizer

    cased = BertChineseTokenizer(zh_vocab_file, lower_case=False)
    reference = BertTokenizer(str(zh_vocab_file), do_lower_case=False)
    texts = CONSTRUCTED + ["Hello World Café ΟΔΟΣ"]
    assert cased.encode_batch(texts) == reference_ids(reference, texts)


def test_empty_batches(ours):
    assert ours.encode("") == [] and ours.encode_batch([]) == []
    assert ours.encode_batch(["", "中", ""]) == [[], [704], []]
    ids, lengths = ours.encode_batch_flat(["", ""])
    assert ids.size == 0 and lengths.tolist() == [0, 0]


def test_lone_surrogate_is_an_error(ours):
    with pytest.raises(ValueError, match="lone surrogate"):
        ours.encode("ab\ud800c")


def test_decode(ours):
    assert ours.decode(ours.encode("我爱北京天安门。")) == "我爱北京天安门。"
    assert ours.decode(ours.encode("hello world, unaffable")) == "hello world, unaffable"
    assert ours.decode(ours.encode("我用GPT-4写了hello world程序！")) == "我用gpt - 4写了hello world程序！"
    framed = [ours.cls, *ours.encode("你好"), ours.sep]
    assert ours.decode(framed) == "[CLS]你好[SEP]"
    assert ours.decode(framed, skip_special_tokens=True) == "你好"
    assert ours.decode(np.array(framed, dtype=np.uint16), skip_special_tokens=True) == "你好"
    assert ours.convert_ids_to_tokens([101, 704]) == ["[CLS]", "中"]


def test_fingerprint(ours, zh_vocab_file, tmp_path):
    data = zh_vocab_file.read_bytes()
    assert ours.fingerprint == "sha256:" + hashlib.sha256(data[:-1]).hexdigest()  # the tokens, "\n"-joined
    copy = tmp_path / "renamed_vocab.txt"
    shutil.copy(zh_vocab_file, copy)
    assert vocab_fingerprint(copy) == ours.fingerprint  # the name does not matter
    tokens = read_vocab(zh_vocab_file)
    tokens[5000] = tokens[5000] + "x"
    copy.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    assert vocab_fingerprint(copy) != ours.fingerprint


def test_check_fingerprint():
    check_fingerprint("sha256:a", "sha256:a", source="x", fix="y")
    check_fingerprint(None, "sha256:a", source="x", fix="y")  # nothing recorded: nothing to compare
    with pytest.raises(DataFormatError, match="data/x_text_document was made with vocab sha256:b.*sha256:a; re-run"):
        check_fingerprint("sha256:b", "sha256:a", source="data/x_text_document", fix="re-run preprocessing")
    with pytest.raises(CheckpointError, match="checkpoint"):
        check_fingerprint(
            "sha256:b", "sha256:a", source="checkpoint ckpt/global_step10", fix="use its vocab", error=CheckpointError
        )


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found; pass --vocab-file"),
        (b"", "empty vocab"),
        (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\na\n", "token 'a' on line 7 repeats line 6"),
        (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\na\n", r"special tokens \['\[MASK\]'\] are not in the vocab"),
        (b"[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\n[MASK]\r\n", None),  # universal newlines: CRLF reads fine
        (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nab\nab \n", "differ only in trailing whitespace"),
        (b"[PAD]\n[UNK]\n\xff\xfe\n", "not UTF-8"),
    ],
)
def test_bad_vocab_files(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    if content is not None:
        path.write_bytes(content)
    if message is None:
        assert BertChineseTokenizer(path).encode("[SEP]") == [3]
        return
    with pytest.raises(DataFormatError, match=message):
        BertChineseTokenizer(path)
