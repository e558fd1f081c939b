"""Data path: Megatron .bin/.idx corpora -> GPT training samples.

The package imports nothing, so the preprocessing workers, which import only the torch-free
modules, never load torch. Import names from their modules:

    indexed_dataset    the .bin/.idx format and IndexedDataset (reader), PREFIX.meta.json
    indexed_builder    IndexedDatasetBuilder (crash-safe writer)
    merge              expand_prefixes, merge_datasets
    preprocess_config  PreprocessConfig, expand_inputs
    corpus_sources     inputs as units (files, archive members) in a fixed order; shards
    corpus_readers     units read as chunks: decompression, archives, Parquet, encoding checks
    preprocess_encode  the per-chunk work of the preprocessing workers
    dedup              document hashes and the compact set of those seen
    preprocess_results each result's documents into the datasets; counts, metadata, summary
    preprocess         preprocess(): corpus -> .bin/.idx
    index_cache        build-once cache of index arrays (torch.distributed)
    splits             split_ranges, document_range: the train/valid/test documents
    document_samples   DocumentDataset: each document's own padded chunks, UER-py's way (torch)
    gpt_dataset        GPTDatasetConfig, GPTDataset: Megatron's packed windows (torch)
    blended_dataset    BlendedDataset, build_train_valid_test_datasets (torch)
    samplers           PretrainingSampler, build_pretraining_data_loader (torch)
"""
