"""Inputs that are not what their name says stop the run with one line naming what they are and the way out:
GB18030/GBK, Big5 and BOM-less UTF-16 corpora (with the iconv command, also when half the lines are ASCII),
gzip data named .txt, a JSON array named .json, corrupt compressed files, empty or truncated Parquet. A few
bad lines in a UTF-8 corpus are still skipped one by one, and a dictionary-encoded Parquet column is read."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import zipfile
from pathlib import Path

import pytest
from test_corpus_inputs import COMPRESS, check_dataset, refusal, write_tar
from test_preprocess import config, outputs_in

from megatron_zh.data.corpus.charsets import guess_encoding, sniff_head
from megatron_zh.data.preprocess.pipeline import preprocess
from megatron_zh.errors import DataFormatError


@pytest.fixture(scope="module")
def bert(zh_vocab_file):
    from transformers import BertTokenizer

    return BertTokenizer(str(zh_vocab_file))


@pytest.fixture(scope="module")
def text(zh_corpus_file) -> str:
    """300 real CLUECorpusSmall documents, one per line."""
    return "".join(line + "\n" for line in zh_corpus_file.read_text(encoding="utf-8").split("\n")[:300])


def big5_text(text: str) -> str:
    """The corpus with the characters Big5 lacks (simplified forms) left out: real text, Big5-encodable."""

    def in_big5(ch: str) -> bool:
        try:
            ch.encode("big5")
        except UnicodeEncodeError:
            return False
        return True

    return "".join(filter(in_big5, text))


def encoded(text: str, encoding: str) -> bytes:
    return (big5_text(text) if encoding == "big5" else text).encode(encoding)


def refuse(tmp_path: Path, vocab: Path, path: Path, **overrides) -> str:
    """The DataFormatError preprocessing gives for `path` (the tool prints it after "error: "); nothing written."""
    with pytest.raises(DataFormatError) as error:
        preprocess(config(tmp_path, vocab, [path], **overrides))
    assert outputs_in(tmp_path) == []
    return str(error.value)


# ---------------------------------------------------------------------------------------- encodings

NAMED = {
    "gbk": ("GB18030 (GBK, GB2312) text", "GB18030"),
    "gb18030": ("GB18030 (GBK, GB2312) text", "GB18030"),
    "big5": ("Big5 text", "BIG5"),
    "utf-16-le": ("UTF-16LE without a byte-order mark", "UTF-16LE"),
    "utf-16-be": ("UTF-16BE without a byte-order mark", "UTF-16BE"),
}


@pytest.mark.parametrize("encoding", list(NAMED))
def test_the_encoding_of_a_chinese_corpus_is_named(text, encoding):
    data = encoded(text, encoding)
    assert sniff_head(data[:65536]) == NAMED[encoding]
    assert sniff_head(text.encode("utf-8")[:65536]) is None
    if not encoding.startswith("utf-16"):
        assert guess_encoding(data) == NAMED[encoding]


@pytest.mark.parametrize("encoding", list(NAMED))
def test_a_chinese_corpus_not_in_utf8_stops_the_run_with_the_iconv_command(tmp_path, zh_vocab_file, text, encoding):
    """Before: 'no documents ... N bad lines' (or, through evaluate.py, the same)."""
    seen, iconv = NAMED[encoding]
    path = tmp_path / "corpus.txt"
    path.write_bytes(encoded(text, encoding))
    assert refuse(tmp_path, zh_vocab_file, path) == (
        f"{path}: {seen}, not UTF-8; convert it first: iconv -f {iconv} -t UTF-8 {path} > {tmp_path}/corpus.utf8.txt"
    )


def test_inside_archives_compressed_files_and_json_lines(tmp_path, zh_vocab_file, text):
    gbk = text.encode("gbk")
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(gbk))
    assert refuse(tmp_path, zh_vocab_file, tmp_path / "c.txt.gz").endswith(
        f"convert it first: gzip -dc {tmp_path}/c.txt.gz | iconv -f GB18030 -t UTF-8 > {tmp_path}/c.utf8.txt"
    )
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("docs/big5.txt", encoded(text, "big5"))
    assert refuse(tmp_path, zh_vocab_file, tmp_path / "a.zip") == (
        f"{tmp_path}/a.zip:docs/big5.txt: Big5 text, not UTF-8; convert it first: unzip -p {tmp_path}/a.zip "
        f"docs/big5.txt | iconv -f BIG5 -t UTF-8 > {tmp_path}/big5.utf8.txt"
    )
    records = "".join(json.dumps({"text": line}, ensure_ascii=False) + "\n" for line in text.splitlines())
    (tmp_path / "c.jsonl").write_bytes(records.encode("gb18030"))
    assert refuse(tmp_path, zh_vocab_file, tmp_path / "c.jsonl").startswith(
        f"{tmp_path}/c.jsonl: GB18030 (GBK, GB2312) text, not UTF-8; convert it first: iconv -f GB18030"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_gbk_corpus_half_ascii_is_refused_not_halved(tmp_path, zh_vocab_file, text, workers):
    """Before: exit 0 with the ASCII half kept and the Chinese half dropped line by line."""
    lines = text.splitlines()
    interleaved = "".join(f"line {i}: plain ASCII text\n{line}\n" for i, line in enumerate(lines))
    (tmp_path / "mixed.txt").write_bytes(interleaved.encode("gbk"))
    assert refuse(tmp_path, zh_vocab_file, tmp_path / "mixed.txt", workers=workers).startswith(
        f"{tmp_path}/mixed.txt: GB18030 (GBK, GB2312) text, not UTF-8; convert it first: iconv -f GB18030"
    )
    # ASCII first, far past what the first-bytes check sees: the whole file's tally decides, once it is read.
    ascii_first = "".join(f"line {i}: plain ASCII text\n" for i in range(6000)) + text
    (tmp_path / "late.txt").write_bytes(ascii_first.encode("gbk"))
    message = refuse(tmp_path, zh_vocab_file, tmp_path / "late.txt", workers=workers, chunk_bytes=32 << 10)
    assert message == (
        f"{tmp_path}/late.txt: GB18030 (GBK, GB2312) text, not UTF-8 (300 of its 300 lines with non-ASCII text are "
        f"not UTF-8); convert it first: iconv -f GB18030 -t UTF-8 {tmp_path}/late.txt > {tmp_path}/late.utf8.txt"
    )


def test_a_file_in_an_unknown_encoding_is_refused_a_few_bad_lines_are_skipped(tmp_path, zh_vocab_file, bert, text):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("café naïve résumé, déjà vu\n" * 200).encode("latin-1"))
    assert refuse(tmp_path, zh_vocab_file, latin) == (
        f"{latin}: text in an encoding this tool does not recognise, not UTF-8; find its encoding (`file -i`, "
        f"`uchardet`) and convert it first: iconv -f ENCODING -t UTF-8 {latin} > {tmp_path}/latin.utf8.txt"
    )
    # Damage in a UTF-8 file is not another encoding: a cut character, a stray byte, one GBK line among many.
    lines = text.splitlines()
    damaged = [line.encode() for line in lines]
    damaged[3] = "截断的字".encode() + b"\xe4\xb8"  # a character cut short
    damaged[7] = b"stray \xff byte"
    damaged[11] = lines[11].encode("gbk")
    (tmp_path / "damaged.txt").write_bytes(b"".join(line + b"\n" for line in damaged))
    stats = preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "damaged.txt"]))
    assert stats.bad_lines == 3
    check_dataset(tmp_path / "out_text_document", bert, [t for i, t in enumerate(lines) if i not in (3, 7, 11)])


# ------------------------------------------------------------------------------- what bytes really are

MISFITS = {  # name: (compress, what the bytes are said to be, the suffix that reads them)
    "gzip.txt": (gzip.compress, "gzip-compressed data, not plain text (its first bytes are 1f 8b)", ".gz"),
    "bzip2.txt": (bz2.compress, "bzip2-compressed data, not plain text (its first bytes are 42 5a 68 39)", ".bz2"),
    "xz.jsonl": (lzma.compress, "xz-compressed data, not JSON lines (its first bytes are fd 37 7a 58)", ".xz"),
    "zstd.txt": (COMPRESS[".zst"], "zstd-compressed data, not plain text (its first bytes are 28 b5 2f fd)", ".zst"),
}


@pytest.mark.parametrize("name", list(MISFITS))
def test_compressed_data_under_a_plain_name_is_named(tmp_path, zh_vocab_file, text, name):
    compress, seen, suffix = MISFITS[name]
    path = tmp_path / name
    path.write_bytes(compress(text.encode()))
    assert (
        refuse(tmp_path, zh_vocab_file, path) == f"{path}: {seen}; rename it to {name}{suffix} and it is read as such"
    )


def test_archives_parquet_and_indexes_under_a_plain_name_are_named(tmp_path, zh_vocab_file, text, zh_text_document):
    with zipfile.ZipFile(tmp_path / "zip.txt", "w") as archive:
        archive.writestr("a.txt", text)
    write_tar(tmp_path / "tar.txt", {"a.txt": text.encode()})
    write_parquet(tmp_path / "p.txt", text.splitlines())
    (tmp_path / "index.txt").write_bytes(Path(zh_text_document["prefix"] + ".idx").read_bytes())
    expected = {
        "zip.txt": "a zip archive, not plain text (its first bytes are 50 4b 03 04); rename it to zip.txt.zip",
        "tar.txt": "a tar archive, not plain text ('ustar' at byte 257); rename it to tar.txt.tar",
        "p.txt": "Parquet, not plain text (its first bytes are 50 41 52 31); rename it to p.txt.parquet",
        "index.txt": "a Megatron dataset index (.idx), not a corpus (its first bytes are 4d 4d 49 44); leave it out",
    }
    for name, start in expected.items():
        assert refuse(tmp_path, zh_vocab_file, tmp_path / name).startswith(f"{tmp_path / name}: {start}")


@pytest.mark.parametrize("layout", ["array", "one-line array", "pretty objects"])
def test_json_that_is_not_json_lines_is_named_with_the_jq_command(tmp_path, zh_vocab_file, text, layout):
    records = [{"text": line} for line in text.splitlines()]
    path = tmp_path / "corpus.json"
    if layout == "array":
        path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
        seen, jq = "a JSON array, not JSON lines (one object per line)", "jq -c '.[]'"
    elif layout == "one-line array":
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        seen, jq = "a JSON array, not JSON lines (one object per line)", "jq -c '.[]'"
    else:
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False, indent=4) for r in records), encoding="utf-8")
        seen = "JSON objects spread over several lines (pretty-printed), not JSON lines (one object per line)"
        jq = "jq -c ."
    assert refuse(tmp_path, zh_vocab_file, path) == (
        f"{path}: {seen}; convert it first: {jq} {path} > {tmp_path}/corpus.lines.jsonl"
    )


# ------------------------------------------------------------------------------------ damaged files


def corrupt(data: bytes) -> bytes:
    """Bytes in the middle of a compressed stream overwritten, as a bad disk or a broken copy leaves them."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 64]) + data[middle + 64 :]


@pytest.mark.parametrize("name", ["c.txt.gz", "c.txt.bz2", "c.txt.xz", "c.txt.zst", "c.zip", "c.tar.gz"])
def test_a_corrupt_compressed_input_is_one_line_not_a_traceback(tmp_path, zh_vocab_file, text, name):
    """Before: zlib.error (a traceback) for .gz and zip members."""
    data = (text * 3).encode()
    path = tmp_path / name
    if name == "c.zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("a.txt", data)
        path.write_bytes(corrupt(path.read_bytes()))
    elif name == "c.tar.gz":
        write_tar(path, {"a.txt": data}, "w:gz")
        path.write_bytes(corrupt(path.read_bytes()))
    else:
        path.write_bytes(corrupt(COMPRESS["." + name.rsplit(".", 1)[1]](data)))
    message = refuse(tmp_path, zh_vocab_file, path)
    assert message.startswith(str(path)), message
    assert "cannot be read to the end" in message or "not a readable" in message, message
    assert message.endswith("check it") or message.endswith("check the download"), message


def write_parquet(path: Path, texts: list[str], dictionary: bool = False) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.array(texts)
    pq.write_table(pa.table({"text": column.dictionary_encode() if dictionary else column}), path, row_group_size=50)


@pytest.mark.parametrize("damage", ["empty", "truncated", "corrupt pages"])
def test_an_empty_or_truncated_parquet_file_is_one_line(tmp_path, zh_vocab_file, text, damage):
    """Before: pyarrow.lib.ArrowInvalid (a traceback)."""
    path = tmp_path / "c.parquet"
    write_parquet(path, text.splitlines())
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "corrupt pages": corrupt(data)}[damage])
    message = refuse(tmp_path, zh_vocab_file, path)
    assert message.startswith(f"{path}: not a readable Parquet file (") and message.endswith("); check the download")
    assert "\n" not in message


def test_a_dictionary_encoded_parquet_column_is_read(tmp_path, zh_vocab_file, bert, text):
    """pandas writes a `category` column as a dictionary-encoded one. Before: refused as not strings."""
    texts = text.splitlines()[:120]
    write_parquet(tmp_path / "c.parquet", texts + texts[:30], dictionary=True)
    preprocess(config(tmp_path, zh_vocab_file, [tmp_path / "c.parquet"]))
    check_dataset(tmp_path / "out_text_document", bert, texts + texts[:30])


# ----------------------------------------------------------------------------------------- the tool


@pytest.mark.integration
def test_the_tool_gives_one_line_and_exit_2(tmp_path, zh_vocab_file, text):
    (tmp_path / "gbk.txt").write_bytes(text.encode("gbk"))
    assert refusal(tmp_path, zh_vocab_file, tmp_path / "gbk.txt") == (
        f"error: {tmp_path}/gbk.txt: GB18030 (GBK, GB2312) text, not UTF-8; convert it first: "
        f"iconv -f GB18030 -t UTF-8 {tmp_path}/gbk.txt > {tmp_path}/gbk.utf8.txt"
    )
    packed = gzip.compress((text * 3).encode())
    (tmp_path / "bad.txt.gz").write_bytes(packed[:100] + bytes(50) + packed[150:])  # zlib.error, as reproduced
    assert refusal(tmp_path, zh_vocab_file, tmp_path / "bad.txt.gz").startswith(
        f"error: {tmp_path}/bad.txt.gz: cannot be read to the end (Error -3 while decompressing data"
    )
    (tmp_path / "empty.parquet").write_bytes(b"")
    assert refusal(tmp_path, zh_vocab_file, tmp_path / "empty.parquet") == (
        f"error: {tmp_path}/empty.parquet: not a readable Parquet file (Parquet file size is 0 bytes); "
        "check the download"
    )
