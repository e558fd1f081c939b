"""Shared fixtures: the real vocab and corpus, found through MEGATRON_ZH_DATA_DIR (CI sets it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Kernels run under Triton's interpreter in tests: these machines have no GPU. Must be set before
# anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MEGATRON_ZH_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()


def _shared_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        message = f"{path} is missing; set MEGATRON_ZH_DATA_DIR to the folder holding {name}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def zh_vocab_file() -> Path:
    """The real BERT-Chinese vocab (21128 tokens)."""
    return _shared_file("google_zh_vocab.txt")


@pytest.fixture(scope="session")
def zh_corpus_file() -> Path:
    """2,500 real CLUECorpusSmall documents, one per line."""
    return _shared_file("CLUECorpusSmall_sampled.txt")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
