"""Opt-in text normalisation before tokenizing: characters the vocab lacks, mapped to equivalents it has.

Why: with the BERT-Chinese vocab 0.65% of CLUECorpusSmall's tokens are [UNK], and over 90% of those
are ordinary punctuation the vocab lacks (“ ” — … – ‘ ’) although it has an equivalent (" - ... ').
BertTokenizer's own normaliser leaves them alone, so the model never sees them. Off by default: the
ids stay exactly BertTokenizer's unless a run asks for a named rule set (`--normalize punctuation`).

The table is derived from the vocab, not written by hand (`derive_table`). A candidate (source
character, target string) comes from Unicode data: the compatibility mapping (NFKC: full-width and
vertical forms, ligatures, circled letters, ...), or a punctuation mark or symbol whose Unicode name
equals another's once words of position or style are dropped (LEFT/RIGHT for quotation marks, EM, EN,
FULLWIDTH, LOW-9, ...) and the ASCII forms' other names applied (DOUBLE QUOTATION MARK = QUOTATION
MARK, DASH = HYPHEN-MINUS, ...). The vocab decides which survive: the source must be [UNK] wherever it
occurs and the target must encode without [UNK]; a source that is a word of its own (punctuation)
needs a target that is too ("…" -> "...", not "⋯", which would glue to neighbouring letters), so only
the source's own position changes. Of several targets the fewest tokens win, then NFKC, then the
lower code points (ASCII before full-width).

Each entry belongs to one named rule set, by its source: `punctuation` (Unicode punctuation: quotes,
dashes, ellipses, vertical and small presentation forms) and `compatibility` (everything else the
derivation finds: letter-like, circled, squared and mathematical forms, Kangxi radicals, ...).

The derivation depends on the Unicode tables of the Python that runs it (3.11 has Unicode 14.0; newer
versions add NFKC mappings), so the table of the default vocab ships as a data file
(`normalization_bert_chinese.json`, rebuilt by `write_table_file`) and is used whenever the vocab's
fingerprint and lower-casing match; any other vocab's is derived when first needed (about a second).
A normalisation is named by its identity, `vocab-equivalents/1 punctuation sha256:...`: the rule sets
and the sha256 of the exact mapping. Datasets, checkpoints and exports record it beside the vocab
fingerprint; "none" means off.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, normalizers

from megatron_zh.errors import ConfigError, DataFormatError
from megatron_zh.fileio import atomic_write
from megatron_zh.validators import Check

NAME = "vocab-equivalents/1"  # bump when the derivation's rules change
NONE = "none"
RULES = ("punctuation", "compatibility")
SHIPPED_TABLE = Path(__file__).with_name("normalization_bert_chinese.json")

# Words of position or style that do not change what a punctuation mark means (LEFT/RIGHT only for
# quotation marks: the ASCII quotes have no direction, brackets do), and the names the ASCII forms go by.
_QUALIFIERS = frozenset(
    {"HIGH-REVERSED-9", "LOW-9", "MIDLINE", "FULLWIDTH", "HALFWIDTH", "EM", "EN", "FIGURE", "TWO-EM", "THREE-EM"}
    | {"NON-BREAKING"}
)
_SYNONYMS = {
    "DOUBLE QUOTATION MARK": "QUOTATION MARK",
    "SINGLE QUOTATION MARK": "APOSTROPHE",
    "DASH": "HYPHEN-MINUS",
    "HYPHEN": "HYPHEN-MINUS",
    "HORIZONTAL BAR": "HYPHEN-MINUS",
}
_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def parse_rules(spec: str) -> tuple[str, ...]:
    """The rule sets a spec names, in RULES order: "none", "punctuation", "punctuation,compatibility",
    or an identity as recorded ("vocab-equivalents/1 punctuation sha256:...")."""
    if spec.startswith(NAME + " "):
        spec = spec.split()[1]
    if spec == NONE:
        return ()
    names = [name.strip() for name in spec.split(",")]
    unknown = [name for name in names if name not in RULES]
    if unknown or not names:
        raise ConfigError(
            f"--normalize {spec!r}: unknown rule set {unknown[0] if unknown else ''!r}; "
            f"use {NONE!r} or a comma-separated list of {', '.join(RULES)}"
        )
    return tuple(rule for rule in RULES if rule in names)


def _accepts(spec: object) -> bool:
    try:
        return isinstance(spec, str) and (parse_rules(spec) is not None)
    except ConfigError:
        return False


NORMALIZE_SPEC = Check(_accepts, f"{NONE!r} or a comma-separated list of {', '.join(RULES)}")


def fingerprint_of_mapping(mapping: Mapping[str, str]) -> str:
    """sha256 of the sorted [source, target] pairs as canonical JSON: the mapping's identity, however derived."""
    canonical = json.dumps(sorted(mapping.items()), ensure_ascii=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()


class Normalization:
    """The chosen rule sets of one vocab's table, applied to documents before tokenizing."""

    def __init__(self, mapping: Mapping[str, str], rules: Sequence[str]) -> None:
        self.rules = tuple(rules)
        self.mapping = dict(sorted(mapping.items()))
        self.fingerprint = fingerprint_of_mapping(self.mapping)
        self.identity = f"{NAME} {','.join(self.rules)} {self.fingerprint}" if self.rules else NONE
        self._is_source = np.zeros(0x110000, dtype=bool) if self.mapping else None
        if self._is_source is not None:
            self._is_source[[ord(c) for c in self.mapping]] = True

    @classmethod
    def off(cls) -> Normalization:
        return cls({}, ())

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    def __repr__(self) -> str:
        return f"Normalization({self.identity!r}, {len(self.mapping)} entries)"

    def apply(self, texts: Sequence[str]) -> list[str]:
        """The documents with every source character replaced by its target.

        One numpy lookup over the whole batch finds the sources (a `re` class of 2,500 characters,
        many outside the BMP, is slower than tokenizing, and str.translate on every document costs
        about as much as tokenizing); each document holding some gets one str.replace per source.
        """
        if self._is_source is None:
            return list(texts)
        joined = "\n".join(texts)
        code_points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        hits = np.flatnonzero(self._is_source.take(code_points))
        if not hits.size:
            return list(texts)
        starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
        documents = np.searchsorted(starts, hits, side="right") - 1
        pairs = np.unique(documents.astype(np.int64) << 21 | code_points[hits])
        out = list(texts)
        for doc, cp in zip((pairs >> 21).tolist(), (pairs & 0x1FFFFF).tolist()):
            out[doc] = out[doc].replace(chr(cp), self.mapping[chr(cp)])  # no target holds a source
        return out

    def tokenizers_normalizer(self, base: normalizers.Normalizer) -> normalizers.Normalizer:
        """The mapping as `tokenizers` Replace steps (one per target) before `base`: for exported tokenizer files."""
        by_target: dict[str, list[str]] = {}
        for source, target in self.mapping.items():
            by_target.setdefault(target, []).append(source)
        steps = [
            normalizers.Replace(Regex("[" + "".join(re.escape(c) for c in sources) + "]"), target)
            for target, sources in by_target.items()
        ]
        return normalizers.Sequence([*steps, base])


@dataclass(frozen=True)
class EquivalenceTable:
    """Every entry derived for one vocab: source character -> (target string, rule set)."""

    entries: Mapping[str, tuple[str, str]]
    vocab_fingerprint: str
    lower_case: bool
    unicode_version: str

    def select(self, spec: str) -> Normalization:
        """The normalisation a spec asks for; an identity spec must name exactly this table's mapping."""
        rules = parse_rules(spec)
        normalization = Normalization({s: t for s, (t, rule) in self.entries.items() if rule in rules}, rules)
        if spec.startswith(NAME + " ") and spec != normalization.identity:
            raise DataFormatError(
                f"the data was normalised with {spec}, but the table for this vocab here gives "
                f"{normalization.identity} (derived with Unicode {self.unicode_version}); tokenize with the "
                "Python (Unicode version) that made the data, or preprocess the data again here"
            )
        return normalization


def _name_key(char: str) -> str | None:
    """The Unicode name without qualifiers, for punctuation and symbols (not brackets: their halves differ)."""
    category, name = unicodedata.category(char), unicodedata.name(char, "")
    quote = "QUOTATION MARK" in name
    if not name or category[0] not in "PS" or (category in ("Ps", "Pe") and not quote):
        return None
    drop = _QUALIFIERS | {"LEFT", "RIGHT"} if quote else _QUALIFIERS
    key = " ".join(word for word in name.split() if word not in drop)
    return _SYNONYMS.get(key, key)


def _candidates() -> dict[str, list[tuple[str, bool]]]:
    """source -> [(target, from NFKC?)] over every assigned code point."""
    candidates: dict[str, list[tuple[str, bool]]] = {}
    by_key: dict[str, list[str]] = {}
    for cp in range(0x110000):
        char = chr(cp)
        if unicodedata.category(char) in ("Cn", "Co", "Cc", "Cs"):
            continue
        nfkc = unicodedata.normalize("NFKC", char)
        if nfkc != char and nfkc.strip():
            candidates.setdefault(char, []).append((nfkc, True))
        key = _name_key(char)
        if key is not None:
            by_key.setdefault(key, []).append(char)
    for group in by_key.values():
        for char in group:
            candidates.setdefault(char, []).extend((other, False) for other in group if other != char)
    return candidates


def derive_table(backend: Tokenizer, unk_id: int) -> dict[str, tuple[str, str]]:
    """{source: (target, rule set)} for the vocab of `backend` (BertChineseTokenizer's `tokenizers` pipeline)."""
    candidates = _candidates()
    sources = sorted(candidates)
    targets = sorted({target for options in candidates.values() for target, _ in options})

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]

    a = backend.token_to_id("a")
    tokens_of = dict(zip(targets, encode(targets)))
    # A target that is its own word(s): between two letters it encodes to its own tokens, nothing merges.
    own_words = {t for t, ids in zip(targets, encode(["a" + t + "a" for t in targets])) if ids == [a, *tokens_of[t], a]}
    separator_unk = {c for c, ids in zip(sources, encode(["a" + c + "a" for c in sources])) if ids == [a, unk_id, a]}
    vocab_chars = {
        ch for token in backend.get_vocab() if token not in _SPECIAL_TOKENS for ch in token.removeprefix("##")
    }
    normalize = backend.normalizer.normalize_str

    def always_unk(char: str) -> bool:
        """A separator that encodes to [UNK], or a character no token holds (every word with it is [UNK])."""
        if char in separator_unk:
            return True
        normalized = normalize(char)
        return bool(normalized.strip()) and any(ch not in vocab_chars for ch in normalized if not ch.isspace())

    table = {}
    for char in sources:
        if not always_unk(char):
            continue
        good = [
            (len(tokens_of[t]), not nfkc, [ord(x) for x in t], t)
            for t, nfkc in candidates[char]
            if tokens_of[t] and unk_id not in tokens_of[t] and (t in own_words or char not in separator_unk)
        ]
        if good:
            target = min(good)[3]
            table[char] = (target, RULES[0] if unicodedata.category(char).startswith("P") else RULES[1])
    return table


def read_table_file(path: Path) -> EquivalenceTable:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("name") != NAME:
        raise DataFormatError(f"{path}: not a {NAME} table (name {data.get('name')!r})")
    entries = {source: (target, rule) for source, target, rule in data["entries"]}
    return EquivalenceTable(entries, data["vocab_fingerprint"], data["lower_case"], data["unicode"])


def load_table(
    vocab_fingerprint: str, lower_case: bool, derive: Callable[[], dict[str, tuple[str, str]]]
) -> EquivalenceTable:
    """The shipped table when it was made for this vocab and casing, else `derive()`d here."""
    shipped = read_table_file(SHIPPED_TABLE)
    if (shipped.vocab_fingerprint, shipped.lower_case) == (vocab_fingerprint, lower_case):
        return shipped
    return EquivalenceTable(derive(), vocab_fingerprint, lower_case, unicodedata.unidata_version)


def write_table_file(path: str | Path, table: EquivalenceTable) -> None:
    """The table as a data file: one entry per line, sorted by source (how SHIPPED_TABLE is made)."""
    lines = [json.dumps([s, t, r], ensure_ascii=False) for s, (t, r) in sorted(table.entries.items())]
    header = {"name": NAME, "vocab_fingerprint": table.vocab_fingerprint, "lower_case": table.lower_case}
    header["unicode"] = table.unicode_version
    head = json.dumps(header, ensure_ascii=False)[:-1]
    with atomic_write(Path(path), "w", encoding="utf-8") as f:
        f.write(head + ',\n"entries": [\n' + ",\n".join(lines) + "\n]}\n")
