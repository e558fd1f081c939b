"""The index cache's description: a damaged one (a key written twice included) is a miss, so the maps are rebuilt."""

from __future__ import annotations

import numpy as np

from megatron_zh.data.datasets.index_cache import IndexCache


def test_a_description_with_a_key_written_twice_is_a_miss(tmp_path):
    cache = IndexCache(tmp_path, "GPTDataset-train", {"seed": 1, "seq_length": 128}, ("doc_idx",))
    cache.save({"doc_idx": np.arange(5, dtype=np.int32)})
    loaded = cache.load()
    assert loaded is not None and loaded["doc_idx"].tolist() == [0, 1, 2, 3, 4]
    text = cache.description_path.read_text()
    cache.description_path.write_text(text.rstrip()[:-1] + ',\n  "seed": 1\n}\n')
    assert cache.load() is None
