"""Preprocessing: a corpus (files, directories, globs, compressed, in archives) -> .bin/.idx, in parallel.

Torch-free, so the workers start in milliseconds (a test imports every module and checks).

  0  formats, zstd_stream, dedup, workers   the corpus formats table; zstd that refuses a truncated
                                            file; document hashes; worker count, orphan-free workers
  1  archives, config                       .zip/.tar members; PreprocessConfig, PreprocessStats
  2  sources, encode                        inputs as ordered units, shards; the workers' per-chunk
                                            work (documents, tokens, framing)
  3  readers                                units as chunks: decompression, encoding checks
  4  results                                results into the datasets; counts, metadata
  5  pipeline, vocab_builder                preprocess(): the driver; WordPiece vocab training
"""
