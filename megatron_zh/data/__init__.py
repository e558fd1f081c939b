"""Data: corpora -> Megatron .bin/.idx files -> training samples.

Sub-packages, lowest first; preprocess and datasets share only the indexed format, never each
other (tests/test_layout.py checks):

  0  indexed      the Megatron .bin/.idx format: the reader, the crash-safe builder, merging datasets
  0  corpus       corpus files: the formats table, encodings, archives, zstd (torch-free)
  1  preprocess   corpus -> .bin/.idx: inputs, chunks, workers, counts, the [UNK] report (torch-free)
  1  datasets     .bin/.idx -> samples: packed and document samples, blends, splits, index cache, samplers
"""
