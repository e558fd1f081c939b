"""Training samples from .bin/.idx datasets, as Megatron's GPTDataset and BlendedDataset cut them.

0  helpers, splits, index_cache, samplers   the C++ index helpers; train/valid/test document ranges;
                                            build-once index arrays; the resumable data-parallel sampler
1  config                                   DatasetConfig (what to read, how to cut it), VocabIds
2  gpt_dataset, document_dataset            GPTDataset: Megatron's packed windows; DocumentDataset:
                                            each document's own padded chunks (UER-py)
3  blended_dataset                          BlendedDataset: several corpora in a fixed ratio
4  builder                                  build_train_valid_test_datasets: one corpus or a blend;
                                            the validation sources; the normalisation checks
5  inspection                               what a dataset holds ([UNK] share, lengths) and any
                                            training sample (tools/inspect_data.py)
"""
