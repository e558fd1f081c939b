"""Is a corpus UTF-8, and if not, what is it? Byte-order marks, UTF-16 without one, GB18030/GBK and Big5.

Chinese corpora often come in GB18030 (GBK, GB2312) or Big5, and some in UTF-16. Read as UTF-8,
every line with Chinese in it is invalid, and skipping those lines one by one would keep the ASCII
lines and drop the Chinese: a silently wrong dataset. So a stream whose lines with non-ASCII text
are mostly not UTF-8 is refused, naming the encoding its bytes read as, so that the message can
give the `iconv` command that converts it (readers.py builds it; results.py checks whole files).

A few invalid lines in a UTF-8 file are something else (a truncated write, a stray byte): those
are reported and skipped line by line, as before. `DecodeTally` counts both kinds per chunk (in the
workers) and per file (in the main process); `foreign_encoding` draws the line between them.

Torch-free: the workers import it.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass

UTF8_BOM = b"\xef\xbb\xbf"
# Longest first: a UTF-32LE mark begins with the UTF-16LE one.
WIDE_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\xfe\xff", "UTF-16BE"),
    (b"\xff\xfe", "UTF-16LE"),
)
SNIFF_BYTES = 1 << 16
SAMPLE_BYTES = 1 << 16  # undecodable lines kept per file to name their encoding
# Fewer non-ASCII characters than this say nothing about an encoding (one bad line is not a GBK file).
MIN_EVIDENCE_CHARS = 16
# Share of a decoding's non-ASCII characters that must be common text in that encoding to name it.
MIN_COMMON_SHARE = 0.6
UNKNOWN_ENCODING = "text in an encoding this tool does not recognise"


@dataclass
class DecodeTally:
    """Lines of one chunk or file: how many hold non-ASCII bytes, and how many of those are not UTF-8."""

    lines: int = 0
    non_ascii: int = 0
    undecodable: int = 0
    sample: bytes = b""  # the first undecodable lines, up to SAMPLE_BYTES

    def count(self, raw: bytes, decodes: bool) -> None:
        """One line (its bytes as read, and whether they are UTF-8)."""
        self.lines += 1
        if raw.isascii():
            return
        self.non_ascii += 1
        if not decodes:
            self.undecodable += 1
            if len(self.sample) < SAMPLE_BYTES:
                self.sample += raw

    def add(self, other: DecodeTally) -> None:
        self.lines += other.lines
        self.non_ascii += other.non_ascii
        self.undecodable += other.undecodable
        if len(self.sample) < SAMPLE_BYTES:
            self.sample += other.sample[: SAMPLE_BYTES - len(self.sample)]


def tally_lines(lines: list[bytes]) -> DecodeTally:
    """A DecodeTally of `lines`, decoding each (the sniff of a file's first bytes)."""
    tally = DecodeTally()
    for raw in lines:
        try:
            raw.decode("utf-8")
            tally.count(raw, True)
        except UnicodeDecodeError:
            tally.count(raw, False)
    return tally


def foreign_encoding(tally: DecodeTally) -> tuple[str, str | None] | None:
    """(what the text is, iconv's name or None when unknown) if the tallied lines are not UTF-8 text.

    Not UTF-8 means: most lines with non-ASCII bytes are invalid UTF-8, and either those lines read
    as a known encoding or they are most of all the lines. Otherwise the invalid lines are damage in
    a UTF-8 file, to be reported and skipped one by one (None)."""
    if tally.undecodable * 2 <= tally.non_ascii:
        return None
    guess = guess_encoding(tally.sample)
    if guess is not None:
        return guess
    if tally.undecodable * 2 <= tally.lines:
        return None
    return UNKNOWN_ENCODING, None


def guess_encoding(data: bytes, candidates: tuple[Candidate, ...] | None = None) -> tuple[str, str] | None:
    """(a description, iconv's name) of the encoding non-UTF-8 text `data` is in, or None if unsure.

    Each candidate decodes `data` strictly; its score is the share of non-ASCII characters that are
    common text in that encoding (for GB18030, a GB2312 character; for Big5, one of its 5,401
    frequent characters; for UTF-16, CJK or punctuation). Random bytes, or one encoding read as
    another, score low; the best score must reach MIN_COMMON_SHARE."""
    best: tuple[float, str, str] | None = None
    for candidate in candidates or LEGACY:
        text = _decode_prefix(data, candidate.codec)
        if text is None or (candidate.needs_line_breaks and "\n" not in text):
            continue
        wide = [ch for ch in text if not ch.isascii()]
        if len(wide) < MIN_EVIDENCE_CHARS:
            continue
        score = sum(map(candidate.is_common, wide)) / len(wide)
        if best is None or score > best[0]:
            best = (score, candidate.description, candidate.iconv_name)
    if best is None or best[0] < MIN_COMMON_SHARE:
        return None
    return best[1], best[2]


def _decode_prefix(data: bytes, codec: str) -> str | None:
    """`data` decoded strictly, forgiving only a character cut at its end; None if it does not decode."""
    if codec.startswith("utf-16"):
        data = data[: len(data) // 2 * 2]
    decoder = codecs.getincrementaldecoder(codec)("strict")
    try:
        return decoder.decode(data, final=False)
    except UnicodeDecodeError:
        return None


def _gb2312_common(ch: str) -> bool:
    try:
        lead = ch.encode("gb2312")[0]
    except UnicodeEncodeError:
        return False
    # Punctuation (row 0xA1), full-width forms (0xA3) and the 6,763 hanzi (0xB0..0xF7); not the rows of
    # kana, Greek and Cyrillic that Big5 bytes read as GB18030 often land in.
    return lead in (0xA1, 0xA3) or 0xB0 <= lead <= 0xF7


def _big5_common(ch: str) -> bool:
    try:
        lead = ch.encode("big5")[0]
    except UnicodeEncodeError:
        return False
    return 0xA1 <= lead <= 0xC6  # symbols and level 1, the frequent characters (0xC9.. is level 2)


def _utf16_common(ch: str) -> bool:
    code = ord(ch)
    return (
        0x4E00 <= code <= 0x9FFF  # CJK unified ideographs
        or 0x3000 <= code <= 0x303F  # CJK punctuation
        or 0xFF00 <= code <= 0xFFEF  # full-width forms
        or 0x2000 <= code <= 0x206F  # general punctuation
        or 0x00A0 <= code <= 0x00FF  # Latin-1
    )


@dataclass(frozen=True)
class Candidate:
    codec: str  # Python's name
    description: str
    iconv_name: str
    is_common: Callable[[str], bool]
    # ASCII read as UTF-16 is all CJK: only text with line breaks (U+000A, "0a 00") can be UTF-16 here.
    needs_line_breaks: bool = False


LEGACY = (  # judged on a file's lines that are not UTF-8 (a line break byte is never inside their characters)
    Candidate("gb18030", "GB18030 (GBK, GB2312) text", "GB18030", _gb2312_common),
    Candidate("big5", "Big5 text", "BIG5", _big5_common),
)
UTF16 = (  # judged on a file's first bytes as they are: lines cut at "0a" bytes would split code units
    Candidate("utf-16-le", "UTF-16LE without a byte-order mark", "UTF-16LE", _utf16_common, True),
    Candidate("utf-16-be", "UTF-16BE without a byte-order mark", "UTF-16BE", _utf16_common, True),
)


def sniff_wide_encoding(head: bytes) -> tuple[str, str | None] | None:
    """(what was seen, iconv's name for it) if `head` is UTF-16/UTF-32 rather than UTF-8, else None.

    The name is None for NULs in no code-unit pattern: binary data, which no conversion makes text."""
    for bom, name in WIDE_BOMS:
        if head.startswith(bom):
            return f"{name} (it starts with that byte-order mark)", name[:6]  # iconv reads the mark: UTF-16, UTF-32
    sample = head[:SNIFF_BYTES]
    if len(sample) < 4 or sample.count(0) * 4 < len(sample):  # a NUL in UTF-8 text is rare; a quarter is not text
        return None
    # Mostly-ASCII text in a wide encoding: NULs fill the high bytes of each code unit.
    nuls_at = [sample[i::4].count(0) for i in range(4)]
    if min(nuls_at) * 2 > max(nuls_at):  # NULs everywhere, no code-unit pattern: binary, not text
        return "mostly NUL bytes (binary data, not UTF-8 text)", None
    if sum(nuls_at) > 0.6 * len(sample):
        name = "UTF-32LE" if nuls_at[0] < nuls_at[3] else "UTF-32BE"
    else:
        name = "UTF-16LE" if nuls_at[1] + nuls_at[3] > nuls_at[0] + nuls_at[2] else "UTF-16BE"
    return f"{name} without a byte-order mark (mostly NUL bytes)", name


def sniff_head(head: bytes) -> tuple[str, str | None] | None:
    """(what the first bytes of a stream are, iconv's name or None) if they are not UTF-8 text, else None."""
    wide = sniff_wide_encoding(head)
    if wide is not None:
        return wide
    if _decode_prefix(head, "utf-8") is not None:
        return None
    # Then whole lines only: the last may be cut by the sniff's length.
    utf16 = guess_encoding(head, UTF16)
    if utf16 is not None:
        return utf16
    cut = head.rfind(b"\n") + 1 or len(head)
    return foreign_encoding(tally_lines(head[:cut].splitlines(keepends=True)))
