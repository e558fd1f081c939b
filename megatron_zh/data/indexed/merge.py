"""Dataset prefixes from globs, and the merge step: several .bin/.idx datasets concatenated into one."""

from __future__ import annotations

import collections
import glob
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from megatron_zh.data.indexed.builder import IndexedDatasetBuilder
from megatron_zh.data.indexed.dataset import (
    IndexedDataset,
    data_file_path,
    index_file_path,
    metadata_file_path,
    read_metadata,
)
from megatron_zh.errors import DataFormatError
from megatron_zh.fileio import refuse_existing_output
from megatron_zh.log import get_logger
from megatron_zh.paths import overlap, refuse_directory_prefix

logger = get_logger(__name__)


def expand_prefixes(patterns: Iterable[str]) -> list[str]:
    """Dataset prefixes from prefixes or globs of them (`shards/part_*`), each glob sorted."""
    prefixes: list[str] = []
    for pattern in patterns:
        pattern = re.sub(r"\.(bin|idx)$", "", pattern)
        if glob.has_magic(pattern):
            found = sorted(path[: -len(".idx")] for path in glob.glob(index_file_path(pattern)))
            if not found:
                raise DataFormatError(f"no dataset matches {pattern!r} (looked for {index_file_path(pattern)})")
            prefixes.extend(found)
        else:
            prefixes.append(pattern)
    return prefixes


# How the tokens were made: inputs that differ in any of these cannot share one dataset.
TOKENIZER_SETTINGS = {
    "vocab_fingerprint": "vocab fingerprint",
    "vocab_size": "vocab size",
    "lower_case": "lower-casing",
    "prepend_cls": "framing ([CLS] first, prepend_cls)",
    "append_eod": "framing ([SEP] last, append_eod)",
    "cls": "[CLS] id",
    "eod": "[SEP] id",
    "dtype": "token dtype",
    "normalization": "text normalisation (--normalize)",
}
# A dataset whose metadata predates a setting was made without it.
_MISSING_MEANS = {"normalization": "none"}
_LOWER_CASE = {"BertWordPieceLowerCase": True, "BertWordPieceCase": False}  # metadata "tokenizer" -> lower_case


def merge_datasets(
    input_prefixes: Iterable[str | os.PathLike[str]],
    output_prefix: str | os.PathLike[str],
    *,
    allow_missing_metadata: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Concatenate datasets (in the order given) into one; returns the merged metadata.

    Every input needs PREFIX.meta.json with its vocab fingerprint, and all must agree on the
    tokenizer settings (`TOKENIZER_SETTINGS`). With `allow_missing_metadata` inputs without it are
    merged too, and the output then claims no vocab fingerprint (training warns instead of checking).
    The output may not be any input's file, however the path is spelled, nor replace a dataset unless
    `overwrite` (it is then replaced only once the merged one is complete).
    """
    prefixes = [os.fspath(p) for p in input_prefixes]
    if not prefixes:
        raise DataFormatError("nothing to merge: give at least one input prefix")
    output = os.fspath(output_prefix)
    refuse_directory_prefix(output, "PREFIX.bin/.idx/.meta.json")
    _refuse_output_over_inputs(output, prefixes)
    for path in _files_of(output):
        refuse_existing_output(path, overwrite)
    _warn_about_repeats(prefixes)
    settings = [_settings_of(prefix) for prefix in prefixes]
    unverified = [p for p, s in zip(prefixes, settings) if "vocab_fingerprint" not in s]
    if unverified and not allow_missing_metadata:
        missing = unverified[0]
        raise DataFormatError(
            f"{metadata_file_path(missing)} is missing or names no vocab fingerprint, so nothing shows "
            f"{missing} was tokenized like the other inputs; pass --allow-missing-metadata to merge it anyway "
            "(the output then carries no vocab fingerprint)"
        )
    merged = _agreed_settings(prefixes, settings)
    if unverified:
        logger.warning(
            "%d input(s) without metadata (%s): the merged dataset carries no vocab fingerprint",
            len(unverified),
            ", ".join(unverified),
        )
        # Nothing is known of those inputs but their dtype: claim no setting for the whole.
        merged = {"dtype": merged["dtype"], "vocab_fingerprint": None, "unverified_inputs": unverified}
    with IndexedDatasetBuilder(output, dtype=np.dtype(merged["dtype"])) as builder:
        for prefix in prefixes:
            builder.add_index(prefix)
        merged.update(documents=builder.num_documents, tokens=builder.num_tokens, merged_from=prefixes)
        merged.update(_merged_provenance([read_metadata(prefix) or {} for prefix in prefixes]))
        builder.finalize(merged)
    return merged


def _files_of(prefix: str) -> list[str]:
    return [data_file_path(prefix), index_file_path(prefix), metadata_file_path(prefix)]


def _refuse_output_over_inputs(output: str, prefixes: list[str]) -> None:
    """The output's .bin/.idx/.meta.json may not be any input's (`dir//name`, `a/../dir/name`, links)."""
    for prefix in prefixes:
        for mine in _files_of(output):
            for theirs in _files_of(prefix):
                if overlap(mine, theirs) == "is":
                    raise DataFormatError(
                        f"output prefix {output} would write {mine}, which is {theirs} of input {prefix}; "
                        "choose a new output prefix"
                    )


def _warn_about_repeats(prefixes: list[str]) -> None:
    seen: dict[str, str] = {}
    for prefix in prefixes:
        real = os.path.realpath(index_file_path(prefix))
        if real in seen:
            logger.warning(
                "%s is merged more than once (also as %s): its documents appear that many times in the output",
                prefix,
                seen[real],
            )
        seen.setdefault(real, prefix)


def _settings_of(prefix: str) -> dict[str, Any]:
    """The tokenizer settings `prefix` states: its metadata's, and the token dtype its .idx stores."""
    meta = read_metadata(prefix) or {}
    if meta:
        meta = {**_MISSING_MEANS, **meta}
    settings = {key: meta[key] for key in TOKENIZER_SETTINGS if meta.get(key) is not None}
    if "lower_case" not in settings and meta.get("tokenizer") in _LOWER_CASE:
        settings["lower_case"] = _LOWER_CASE[meta["tokenizer"]]
    dataset = IndexedDataset(prefix)
    settings["dtype"] = dataset.dtype.name  # what the .idx says wins over any claim
    del dataset
    return settings


def _agreed_settings(prefixes: list[str], settings: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings every input states alike; a setting two inputs state differently is an error."""
    for key, what in TOKENIZER_SETTINGS.items():
        stated = [(p, s[key]) for p, s in zip(prefixes, settings) if key in s]
        for prefix, value in stated[1:]:
            if value != stated[0][1]:
                raise DataFormatError(
                    f"cannot merge {stated[0][0]} and {prefix}: their {what} differs "
                    f"({key} {stated[0][1]!r} vs {value!r}); merge only datasets tokenized the same way"
                )
    merged = {key: settings[0][key] for key in TOKENIZER_SETTINGS if all(key in s for s in settings)}
    if "lower_case" in merged:
        merged["tokenizer"] = "BertWordPieceLowerCase" if merged["lower_case"] else "BertWordPieceCase"
    return merged


def _merged_provenance(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """The inputs' member lists concatenated, their per-input summaries and [UNK] counts added up.

    Shards of one run split an archive's members between them, so an archive's entries are added by
    path. A merged top list adds the inputs' own top lists: its counts are lower bounds."""
    if not metas or not all("unk" in meta and "by_input" in meta for meta in metas):
        return {}
    framing = int(metas[0].get("prepend_cls", True)) + int(metas[0].get("append_eod", True))  # all agree
    parts: dict[str, list[dict[str, Any]]] = {}
    for entry in (e for meta in metas for e in meta["by_input"]):
        parts.setdefault(entry["path"], []).append(entry)
    by_input = []
    for path, entries in parts.items():
        total = {key: sum(e[key] for e in entries) for key in ("members", "bytes", "documents", "tokens")}
        body = total["tokens"] - framing * total["documents"]
        by_input.append({"path": path, **total, **_unk_of(entries, body, top=10)})
    body = sum(meta["unk"]["tokens"] for meta in metas)
    return {
        "inputs": [entry for meta in metas for entry in meta.get("inputs", [])],
        "by_input": by_input,
        "unk": {"tokens": body, **_unk_of([meta["unk"] for meta in metas], body, top=50)},
    }


def _unk_of(parts: list[dict[str, Any]], body_tokens: int, top: int) -> dict[str, Any]:
    """unk, unk_share and top of parts that each have "unk" and "top"."""
    unk = sum(part["unk"] for part in parts)
    counts: collections.Counter[str] = collections.Counter()
    for part in parts:
        counts.update({span: n for span, n in part["top"]})
    share = round(unk / body_tokens, 6) if body_tokens else 0.0
    return {"unk": unk, "unk_share": share, "top": [[span, n] for span, n in counts.most_common(top)]}
