"""Preprocessing: a corpus (files, directories, globs, compressed, in archives) -> .bin/.idx, in parallel.

Torch-free, so the workers start in milliseconds (a test imports every module and checks).

  0  formats, archives, zstd_stream, dedup, workers   the corpus formats table; .zip/.tar members;
                                                      zstd that refuses a truncated file; document
                                                      hashes; worker count and orphan-free workers
  1  config                                           PreprocessConfig, PreprocessStats
  2  sources, encode                                  inputs as ordered units, shards; the workers'
                                                      per-chunk work (documents, tokens, framing)
  3  readers                                          units as chunks: decompression, encoding checks
  4  results                                          results into the datasets; counts, metadata
  5  pipeline, vocab_builder                          preprocess(): the driver; WordPiece vocab training
"""
