"""Dataset prefixes from globs, and the merge step: several .bin/.idx datasets concatenated into one."""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable
from typing import Any

from megatron_zh.data.indexed_builder import IndexedDatasetBuilder
from megatron_zh.data.indexed_dataset import IndexedDataset, index_file_path, read_metadata
from megatron_zh.errors import DataFormatError


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


def merge_datasets(
    input_prefixes: Iterable[str | os.PathLike[str]], output_prefix: str | os.PathLike[str]
) -> dict[str, Any]:
    """Concatenate datasets (in the order given) into one; returns the merged metadata.

    Inputs must share a token dtype and, where they have metadata, the vocab fingerprint and framing.
    """
    prefixes = [os.fspath(p) for p in input_prefixes]
    if not prefixes:
        raise DataFormatError("nothing to merge: give at least one input prefix")
    if os.fspath(output_prefix) in prefixes:
        raise DataFormatError(f"output prefix {output_prefix} is also an input; choose a new prefix")
    first = IndexedDataset(prefixes[0])
    dtype = first.dtype
    del first
    metas = [read_metadata(p) for p in prefixes]
    merged = _merge_metadata(prefixes, metas)
    with IndexedDatasetBuilder(output_prefix, dtype=dtype) as builder:
        for prefix in prefixes:
            builder.add_index(prefix)
        merged.update(documents=builder.num_documents, tokens=builder.num_tokens, merged_from=prefixes)
        builder.finalize(merged)
    return merged


def _merge_metadata(prefixes: list[str], metas: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Keys that describe how the tokens were made must agree; counts are recomputed by the caller."""
    merged: dict[str, Any] = {}
    for key in ("vocab_fingerprint", "vocab_size", "append_eod", "prepend_cls", "eod", "cls", "dtype"):
        values = {json.dumps(m[key]) for m in metas if m is not None and key in m}
        if len(values) > 1:
            found = ", ".join(f"{p}: {m.get(key)!r}" for p, m in zip(prefixes, metas) if m is not None)
            raise DataFormatError(f"cannot merge datasets with different {key!r} ({found})")
        if values:
            merged[key] = json.loads(values.pop())
    return merged
