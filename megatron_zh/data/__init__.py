"""Data path: Megatron .bin/.idx corpora -> GPT training samples.

Public names are re-exported lazily, so `import megatron_zh.data.indexed_dataset` (used by the
preprocessing workers) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IndexedDataset": "indexed_dataset",
    "IndexedDatasetBuilder": "indexed_dataset",
    "read_metadata": "indexed_dataset",
    "write_metadata": "indexed_dataset",
    "GPTDataset": "gpt_dataset",
    "GPTDatasetConfig": "gpt_dataset",
    "BlendedDataset": "blended_dataset",
    "build_train_valid_test_datasets": "blended_dataset",
    "PretrainingSampler": "samplers",
    "build_pretraining_data_loader": "samplers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
