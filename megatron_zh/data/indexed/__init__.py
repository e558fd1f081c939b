"""The Megatron indexed dataset: PREFIX.bin (tokens) + PREFIX.idx (MMIDIDX v1 index) + PREFIX.meta.json.

0  dataset   the format, IndexedDataset (memory-mapped reader), the metadata sidecar
1  builder   IndexedDatasetBuilder: appends documents, appears only once complete
2  merge     expand_prefixes, merge_datasets: datasets (shards) concatenated in order
"""
