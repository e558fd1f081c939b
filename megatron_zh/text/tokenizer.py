"""BERT-Chinese WordPiece tokenization with Hugging Face `tokenizers`, ids identical to `transformers.BertTokenizer`.

The backend is the pipeline `transformers.BertTokenizer(vocab_file)` builds (transformers 5.x): the
vocab read the way it reads it, BertNormalizer (clean text, space out CJK characters, lower-case,
strip accents), BertPreTokenizer (split on whitespace and punctuation), WordPiece with
max_input_chars_per_word=100, and the five special tokens matched in the raw text. Where that
pipeline differs from the original pure-Python BERT algorithm (transformers 4's BertTokenizer,
UER-py, Google's BERT) we follow it, as the exported model's tokenizer does: a final Greek sigma,
the first 256 code points of CJK extension E, unassigned code points and characters newer than
the Unicode tables of `tokenizers`. On the real corpus all three agree (tests/test_tokenizer.py).

Batch encoding adds an exact shortcut for the characters that dominate Chinese text. A character
whose normalised form starts and ends at a split point (a CJK ideograph becomes " X ", punctuation
is isolated, whitespace splits) tokenizes the same whatever surrounds it, and its neighbours
tokenize as if it were not there. Such a "separator" gets its id (0 or 1 token) from a table built
by running the backend on it; the text between separators goes to the backend in one call. The
result is the backend's output by construction (and checked by tests character by character), at
a fraction of the cost: over 90% of the characters of Chinese text are ideographs and punctuation.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from megatron_zh.errors import DataFormatError, MegatronZhError
from megatron_zh.text.normalization import NONE, EquivalenceTable, Normalization, derive_table, load_table
from megatron_zh.text.unknown_tokens import UnkTally, tally_unknown

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
MAX_INPUT_CHARS_PER_WORD = 100  # BertTokenizer's default: a longer "word" becomes one [UNK]

# Code points the separator table covers: the BMP (minus surrogates), which holds nearly all of
# Chinese text (the CJK extensions in plane 2 are ~1 in 100,000 characters of CLUECorpusSmall and
# would cost 4x the set-up time). Anything not covered goes to the backend: correct, only slower.
_TABLE_RANGES = ((0x0000, 0xD800), (0xE000, 0x10000))
_SEPARATOR_NONE, _SEPARATOR_ONE, _NOT_SEPARATOR = 0, 1, 2


def read_vocab(vocab_file: str | os.PathLike) -> list[str]:
    """The tokens of a BERT vocab.txt in id order: one per line, only the line break removed.

    Rejects what would make ids ambiguous: duplicates, missing special tokens, and tokens that
    `tokenizers` would merge (it trims trailing whitespace when it reads a vocab file).
    """
    path = Path(vocab_file)
    if not path.is_file():
        raise DataFormatError(
            f"vocab file {path} not found; pass --vocab-file, or fetch the default BERT-Chinese vocab with "
            "`python tools/fetch_assets.py`"
        )
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f.readlines()]
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc}); a BERT vocab.txt is UTF-8, one token per line") from exc
    if not tokens:
        raise DataFormatError(f"{path}: empty vocab file")
    seen: dict[str, int] = {}
    trimmed: dict[str, int] = {}
    for line_no, token in enumerate(tokens, start=1):
        if token in seen:
            raise DataFormatError(
                f"{path}: token {token!r} on line {line_no} repeats line {seen[token]}; ids would be ambiguous"
            )
        seen[token] = line_no
        key = token.rstrip()
        if key in trimmed:
            raise DataFormatError(
                f"{path}: tokens on lines {trimmed[key]} and {line_no} differ only in trailing whitespace, "
                "which `tokenizers` (and transformers.BertTokenizer) trims when reading a vocab"
            )
        trimmed[key] = line_no
    missing = [t for t in SPECIAL_TOKENS if t not in seen]
    if missing:
        hint = (
            " (the file has Windows line endings? tokens must be separated by \\n)" if tokens[0].endswith("\r") else ""
        )
        raise DataFormatError(f"{path}: special tokens {missing} are not in the vocab{hint}")
    return tokens


def fingerprint_of_tokens(tokens: Sequence[str]) -> str:
    return "sha256:" + hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def vocab_fingerprint(vocab_file: str | os.PathLike) -> str:
    """A stable id of the vocab: sha256 of its tokens in id order (independent of the file's name and line endings)."""
    return fingerprint_of_tokens(read_vocab(vocab_file))


def check_fingerprint(
    found: str | None,
    expected: str,
    *,
    source: str,
    fix: str,
    error: type[MegatronZhError] = DataFormatError,
) -> None:
    """Raise `error` saying `source` was made with another vocab (and what to do) unless fingerprints match.

    `found` None (a file from before fingerprints, or made by another tool) passes: nothing to compare.
    """
    if found is not None and found != expected:
        raise error(f"{source} was made with vocab {found}, but the vocab in use is {expected}; {fix}")


def bert_normalizer(lower_case: bool = True) -> normalizers.Normalizer:
    # strip_accents=None follows lower_case, as in the original BERT and in BertTokenizer.
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lower_case
    )


def build_backend(vocab_file: str | os.PathLike, lower_case: bool = True) -> Tokenizer:
    """The `tokenizers` pipeline of `transformers.BertTokenizer(vocab_file, do_lower_case=lower_case)`,
    without post-processing."""
    model = WordPiece(
        WordPiece.read_file(os.fspath(vocab_file)), unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD
    )
    backend = Tokenizer(model)
    backend.normalizer = bert_normalizer(lower_case)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Special tokens written in the text ("[SEP]") are matched before normalisation, as BertTokenizer does.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.no_padding()
    backend.no_truncation()
    return backend


class _SeparatorTable:
    """Per code point: is it a separator (see the module docstring), and its token id if it emits one.

    Every entry is measured on the backend itself; a character not proven to be a separator is left
    to the backend, so a gap here costs speed, never correctness.
    """

    # Normalisation is per character (only canonical reordering of combining marks looks at
    # neighbours, and "|" stops it), so normalising "a|b|c" in one call gives every character's form.
    _DELIMITER = "|"
    _BATCH = 512  # characters per string when encoding the candidates

    def __init__(self, backend: Tokenizer) -> None:
        self.kind = np.full(0x110000, _NOT_SEPARATOR, dtype=np.uint8)
        self.token = np.zeros(0x110000, dtype=np.int32)
        # Only spaces, punctuation, symbols and ideographs can normalise to something that starts and
        # ends at a split point; letters, marks and digits decompose to letters, marks and digits.
        chars = [
            char
            for low, high in _TABLE_RANGES
            for char in map(chr, range(low, high))
            if unicodedata.category(char)[0] in "ZPS" or char in "\t\n\r" or _is_cjk_ideograph(char)
        ]
        chars.remove(self._DELIMITER)
        normalized = backend.normalizer.normalize_str(self._DELIMITER.join(chars)).split(self._DELIMITER)
        if len(normalized) != len(chars):  # something normalised into the delimiter: go one by one
            normalized = [backend.normalizer.normalize_str(c) for c in chars]
        chars.append(self._DELIMITER)
        normalized.append(backend.normalizer.normalize_str(self._DELIMITER))
        splits = _split_points(backend, {ch for n in normalized if n for ch in (n[0], n[-1])})
        separators = [
            char
            for char, norm in zip(chars, normalized)
            if norm and norm[0] in splits and norm[-1] in splits and (norm == f" {char} " or _no_marks(char, norm))
        ]
        # Separators separate each other too: a string of them encodes to each one's ids in order.
        batches = [separators[i : i + self._BATCH] for i in range(0, len(separators), self._BATCH)]
        encodings = backend.encode_batch_fast(["\n".join(b) for b in batches], add_special_tokens=False)
        for batch, encoding in zip(batches, encodings):
            if len(encoding.ids) == len(batch):  # one id each
                code_points = [ord(c) for c in batch]
                self.kind[code_points] = _SEPARATOR_ONE
                self.token[code_points] = encoding.ids
                continue
            for char, single in zip(batch, backend.encode_batch_fast(batch, add_special_tokens=False)):
                if len(single.ids) <= 1:  # some emit nothing (spaces) or several: one by one
                    self.kind[ord(char)] = _SEPARATOR_ONE if single.ids else _SEPARATOR_NONE
                    self.token[ord(char)] = single.ids[0] if single.ids else 0


def _split_points(backend: Tokenizer, candidates: Iterable[str]) -> set[str]:
    """Characters the pre-tokenizer splits at: whitespace (dropped) and punctuation (isolated).

    One call on "a" + c1 + "a" + c2 + "a" ...: at position 2k+1, a piece of exactly that character
    means punctuation, no piece at all means whitespace; a letter would have merged with the "a"s.
    """
    candidates = sorted(candidates)
    text = "a" + "a".join(candidates) + "a"
    pieces = [offsets for _, offsets in backend.pre_tokenizer.pre_tokenize_str(text)]
    covered = np.zeros(len(text), dtype=bool)
    for start, end in pieces:
        covered[start:end] = True
    isolated = {start for start, end in pieces if end == start + 1}
    return {ch for k, ch in enumerate(candidates) if (2 * k + 1) in isolated or not covered[2 * k + 1]}


def _no_marks(char: str, normalized: str) -> bool:
    """Neither the character's decomposition nor its normal form has a combining mark (which could reorder)."""
    return not any(unicodedata.combining(x) for x in unicodedata.normalize("NFD", char) + normalized)


class BertChineseTokenizer:
    """BERT WordPiece over a vocab.txt (the BERT-Chinese one by default), ids identical to `transformers.BertTokenizer`.

    `encode*` add no special tokens; framing documents as [CLS] ... [SEP] is the caller's choice.
    `normalization` ("none", "punctuation", ... or a recorded identity: normalization.py) maps characters
    the vocab lacks to equivalents before encoding; "none" keeps BertTokenizer's ids exactly.
    """

    def __init__(self, vocab_file: str | os.PathLike, lower_case: bool = True, normalization: str = NONE) -> None:
        self.vocab_file = Path(vocab_file)
        self.lower_case = lower_case
        self._tokens = read_vocab(self.vocab_file)
        self.vocab_size = len(self._tokens)
        self.fingerprint = fingerprint_of_tokens(self._tokens)
        self._backend = build_backend(self.vocab_file, lower_case)
        if self._backend.get_vocab_size(with_added_tokens=True) != self.vocab_size:
            raise DataFormatError(
                f"{self.vocab_file}: `tokenizers` read a different number of tokens than the file has lines"
            )
        # A token's id is its line: read_vocab guarantees every special token is there.
        ids = {t: self._tokens.index(t) for t in SPECIAL_TOKENS}
        self.pad, self.unk, self.cls, self.sep, self.mask = (ids[t] for t in SPECIAL_TOKENS)
        self.eod = self.sep  # [SEP] ends a document
        self._special_ids = {ids[t] for t in SPECIAL_TOKENS}
        self._special_pattern = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
        self._table: _SeparatorTable | None = None
        self._equivalents: EquivalenceTable | None = None
        self.normalization = Normalization.off() if normalization == NONE else self.equivalents().select(normalization)

    @property
    def backend(self) -> Tokenizer:
        """The plain `tokenizers` pipeline (the same ids, without the separator shortcut and the normalisation)."""
        return self._backend

    def equivalents(self) -> EquivalenceTable:
        """Every normalisation entry for this vocab: the shipped table, or derived here (normalization.py)."""
        if self._equivalents is None:
            self._equivalents = load_table(
                self.fingerprint, self.lower_case, lambda: derive_table(self._backend, self.unk)
            )
        return self._equivalents

    def __repr__(self) -> str:
        vocab = str(self.vocab_file)
        return f"BertChineseTokenizer({vocab!r}, vocab_size={self.vocab_size}, lower_case={self.lower_case})"

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        ids, lengths = self.encode_batch_flat(texts)
        return [part.tolist() for part in np.split(ids, np.cumsum(lengths[:-1]))] if len(texts) else []

    def encode_batch_flat(
        self, texts: Sequence[str], unk_out: list[UnkTally] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated (int32) and the number of ids of each text (int64); with `unk_out`,
        appends the tally of their [UNK]s (unknown_tokens.py) to it."""
        if self._table is None:
            self._table = _SeparatorTable(self._backend)
        if self.normalization.enabled:
            texts = self.normalization.apply(texts)
        joined = "\n".join(texts)  # "\n" is a separator that emits nothing: texts stay apart
        try:
            code_points = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"text contains a lone surrogate ({exc.object[exc.start : exc.end]!r}), which is not valid Unicode; "
                "decode input bytes with errors='strict' or 'replace'"
            ) from None
        kind = self._table.kind.take(code_points)  # take: half the time of kind[code_points] here
        token = self._table.token.take(code_points)
        if "[" in joined:  # special tokens written in the text are single separators
            for match in self._special_pattern.finditer(joined):
                start, end = match.span()
                special = self._backend.token_to_id(match.group())
                assert special is not None  # the pattern matches the vocab's special tokens only
                kind[start], token[start] = _SEPARATOR_ONE, special
                kind[start + 1 : end] = _SEPARATOR_NONE

        # Maximal runs of non-separators go to the backend as they are, one per line of one string
        # ("\n" separates them like any separator); token offsets tell which run each id belongs to.
        in_run = (kind == _NOT_SEPARATOR).view(np.int8)
        edges = np.flatnonzero(np.diff(in_run, prepend=0, append=0))
        run_starts, run_ends = edges[0::2], edges[1::2]
        run_ids = np.zeros(0, dtype=np.int32)
        run_lengths = np.zeros(len(run_starts), dtype=np.int64)
        unk_words: list[tuple[int, int]] = []  # (start, end) in `joined` of words the backend made [UNK]
        if len(run_starts):
            encoding = self._backend.encode(
                "\n".join([joined[s:e] for s, e in zip(run_starts.tolist(), run_ends.tolist())]),
                add_special_tokens=False,
            )
            run_ids = np.array(encoding.ids, dtype=np.int32)
            if len(run_ids):
                lines_start = np.cumsum(run_ends - run_starts + 1) - (run_ends - run_starts + 1)
                token_offsets = encoding.offsets  # a new Python list on every access: read it once
                token_starts = np.fromiter((start for start, _ in token_offsets), dtype=np.int64, count=len(run_ids))
                owner = np.searchsorted(lines_start, token_starts, side="right") - 1
                run_lengths = np.bincount(owner, minlength=len(run_starts)).astype(np.int64)
                if unk_out is not None:
                    for i in np.flatnonzero(run_ids == self.unk).tolist():
                        start = int(run_starts[owner[i]] + token_starts[i] - lines_start[owner[i]])
                        unk_words.append((start, start + token_offsets[i][1] - token_offsets[i][0]))

        # Every position emits: 1 id (separator with a token), its run's ids (first char of a run), or nothing.
        counts = (kind == _SEPARATOR_ONE).astype(np.int64)
        counts[run_starts] = run_lengths
        offsets = np.cumsum(counts) - counts
        ids = np.empty(int(counts.sum()), dtype=np.int32)
        single = np.flatnonzero(kind == _SEPARATOR_ONE)
        ids[offsets[single]] = token[single]
        if len(run_ids):
            first = np.repeat(offsets[run_starts] - (np.cumsum(run_lengths) - run_lengths), run_lengths)
            ids[first + np.arange(len(run_ids))] = run_ids

        text_starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]], dtype=np.int64)
        lengths = np.add.reduceat(np.append(counts, 0), text_starts) if len(texts) else np.zeros(0, np.int64)
        if unk_out is not None:
            separators = single[token[single] == self.unk]
            unk_out.append(tally_unknown(joined, code_points, text_starts, separators, unk_words))
        return ids, lengths

    # -- decoding -----------------------------------------------------------------------------

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self._tokens[int(i)] for i in ids]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of `ids`: WordPiece pieces joined, no spaces between CJK characters or around CJK punctuation."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if skip_special_tokens and i in self._special_ids:
                continue
            token = self._tokens[i]
            if token.startswith("##") and len(token) > 2 and words:
                words[-1] += token[2:]
            else:
                words.append(token)
        out: list[str] = []
        for word in words:
            if out and word and _wants_space(out[-1][-1] if out[-1] else " ", word[0]):
                out.append(" ")
            out.append(word)
        return "".join(out)


def _is_cjk_ideograph(ch: str) -> bool:
    """The code point ranges BERT calls Chinese characters (and puts spaces around)."""
    cp = ord(ch)
    return 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2FA1F or 0xF900 <= cp <= 0xFAFF


_NO_SPACE_BEFORE = set(".,!?;:%)]}'\"")
_NO_SPACE_AFTER = set("([{'\"")


def _wants_space(left: str, right: str) -> bool:
    if _is_cjk_like(left) or _is_cjk_like(right):
        return False
    return right not in _NO_SPACE_BEFORE and left not in _NO_SPACE_AFTER


def _is_cjk_like(ch: str) -> bool:
    """CJK ideographs and non-ASCII punctuation / full-width forms: written without spaces in Chinese."""
    cp = ord(ch)
    if cp < 0x80:
        return False
    return (
        _is_cjk_ideograph(ch)
        or 0x3000 <= cp <= 0x303F
        or 0xFF00 <= cp <= 0xFFEF
        or unicodedata.category(ch).startswith("P")
    )
