"""Datasets made with and without a text normalisation are never mixed by mistake: merge adds up their
provenance only when they agree, opening checks the normalisation like the vocab fingerprint, and a
run's datasets must share one. Also the --valid-data-path names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_zh.data.datasets.builder import common_normalization, dataset_normalization, open_indexed_dataset
from megatron_zh.data.datasets.config import DatasetConfig, validation_sources
from megatron_zh.data.indexed.builder import IndexedDatasetBuilder
from megatron_zh.data.indexed.dataset import read_metadata
from megatron_zh.data.indexed.merge import merge_datasets
from megatron_zh.errors import ConfigError, DataFormatError

PUNCTUATION = "vocab-equivalents/1 punctuation sha256:cc"
SETTINGS = {"vocab_fingerprint": "sha256:aa", "prepend_cls": True, "append_eod": True}


def dataset(prefix: Path, meta: dict | None, documents: int = 4) -> str:
    builder = IndexedDatasetBuilder(str(prefix), dtype="uint16")
    for i in range(documents):
        builder.add_document(np.arange(i + 3) + 100)
    builder.finalize(meta)
    return str(prefix)


def test_a_dataset_says_its_normalisation(tmp_path):
    assert dataset_normalization(dataset(tmp_path / "old", SETTINGS)) == "none"  # made before the field
    assert dataset_normalization(dataset(tmp_path / "new", {**SETTINGS, "normalization": PUNCTUATION})) == PUNCTUATION
    assert dataset_normalization(dataset(tmp_path / "megatron", None)) is None  # no metadata: unknown


def test_open_checks_it_like_the_fingerprint(tmp_path):
    plain = dataset(tmp_path / "plain", SETTINGS)
    normalised = dataset(tmp_path / "normalised", {**SETTINGS, "normalization": PUNCTUATION})
    open_indexed_dataset(plain, "sha256:aa", "none")
    open_indexed_dataset(normalised, "sha256:aa", PUNCTUATION)
    with pytest.raises(
        DataFormatError,
        match=r"normalised\.bin/\.idx was tokenized with text normalisation .*"
        r"preprocess it again with the same --normalize",
    ):
        open_indexed_dataset(normalised, "sha256:aa", "none")
    with pytest.raises(DataFormatError, match="tokenized with text normalisation 'none'"):
        open_indexed_dataset(plain, None, PUNCTUATION)


def test_a_run_shares_one_normalisation(tmp_path):
    plain = dataset(tmp_path / "plain", SETTINGS)
    other = dataset(tmp_path / "other", {**SETTINGS, "normalization": "none"})
    unknown = dataset(tmp_path / "unknown", None)
    normalised = dataset(tmp_path / "normalised", {**SETTINGS, "normalization": PUNCTUATION})
    assert common_normalization([plain, other, unknown]) == "none"
    assert common_normalization([unknown, normalised]) == PUNCTUATION
    with pytest.raises(
        ConfigError, match=f"different text normalisations .*{plain}: none; .*normalised: {PUNCTUATION}"
    ):
        common_normalization([plain, normalised])


def test_merge_adds_up_the_report_by_input(tmp_path):
    """Two shards that split one archive's members: the archive is one entry of the merged summary."""

    def report(members: int, documents: int, tokens: int, unk: int, top: list) -> dict:
        entry = {"path": "news.zip", "members": members, "bytes": 100 * members, "documents": documents}
        entry.update(tokens=tokens, unk=unk, unk_share=0.0, top=top)
        body = tokens - 2 * documents
        return {"unk": {"tokens": body, "unk": unk, "unk_share": 0.0, "top": top}, "by_input": [entry]}

    a = dataset(tmp_path / "a", {**SETTINGS, **report(2, 4, 30, 3, [["“", 2], ["—", 1]]), "inputs": [{"m": 1}]})
    b = dataset(tmp_path / "b", {**SETTINGS, **report(1, 4, 30, 2, [["“", 2]]), "inputs": [{"m": 2}]})
    merge_datasets([a, b], tmp_path / "merged")
    meta = read_metadata(tmp_path / "merged")
    assert meta["normalization"] == "none" and meta["inputs"] == [{"m": 1}, {"m": 2}]
    assert meta["by_input"] == [
        {
            "path": "news.zip",
            "members": 3,
            "bytes": 300,
            "documents": 8,
            "tokens": 60,
            "unk": 5,
            "unk_share": round(5 / 44, 6),
            "top": [["“", 4], ["—", 1]],
        }
    ]
    assert meta["unk"] == {"tokens": 44, "unk": 5, "unk_share": round(5 / 44, 6), "top": [["“", 4], ["—", 1]]}


@pytest.mark.parametrize(
    "entries, sources",
    [
        (("data/news_text_document",), [("news", "data/news_text_document")]),
        (("web=data/a=b_text_document", "x"), [("web", "data/a=b_text_document"), ("x", "x")]),
    ],
)
def test_validation_source_names(entries, sources):
    assert validation_sources(entries) == sources
    assert DatasetConfig(data_path=("d",), valid_data_path=list(entries)).validation_sources == sources


@pytest.mark.parametrize(
    "entries, message",
    [
        (("a/news_text_document", "b/news_text_document"), "names two sources 'news'"),
        (("my news=x",), "a name without spaces"),
        (("=x",), "give a dataset prefix"),
        (("n=",), "give a dataset prefix"),
    ],
)
def test_bad_validation_sources(entries, message):
    with pytest.raises(ConfigError, match=message):
        DatasetConfig(data_path=("d",), valid_data_path=entries)
