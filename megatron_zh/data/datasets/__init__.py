"""Training samples from .bin/.idx datasets, as Megatron's GPTDataset and BlendedDataset cut them.

0  helpers, splits, index_cache, samplers   the C++ index helpers; train/valid/test document ranges;
                                            build-once index arrays; the resumable data-parallel sampler
1  document_dataset                         DocumentDataset: each document's own padded chunks (UER-py)
2  gpt_dataset                              GPTDataset: Megatron's packed windows; one corpus's splits
3  blended_dataset                          BlendedDataset, build_train_valid_test_datasets
"""
