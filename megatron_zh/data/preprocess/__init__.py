"""Preprocessing: a corpus (files, directories, globs, compressed, in archives) -> .bin/.idx, in parallel.

Torch-free, so the workers start in milliseconds (a test imports every module and checks).

The files themselves (formats, encodings, archives) are data/corpus.

  0  dedup, workers, config                 document hashes; worker count, orphan-free workers;
                                            PreprocessConfig, PreprocessStats
  1  sources, encode                        inputs as ordered units, shards, what is skipped; the
                                            workers' per-chunk work (documents, tokens, framing)
  2  readers, report                        units as chunks: decompression, first-bytes and change checks;
                                            the [UNK] report per dataset, unit and input
  3  results                                results into the datasets; counts, metadata
  4  pipeline, vocab_builder                preprocess(): the driver; WordPiece vocab training
"""
