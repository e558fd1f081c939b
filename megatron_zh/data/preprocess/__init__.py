"""Preprocessing: a corpus (files, directories, globs, compressed, in archives) -> .bin/.idx, in parallel.

Torch-free, so the workers start in milliseconds (a test imports every module and checks).

  0  charsets, zstd_stream, dedup, workers  UTF-8 or not (GB18030, Big5, UTF-16); zstd that refuses a
                                            truncated file; document hashes; worker count, orphan-free
                                            workers
  1  formats, archives                      the corpus formats table, what each looks like; .zip/.tar
                                            members, and those skipped
  2  config                                 PreprocessConfig, PreprocessStats
  3  sources, encode                        inputs as ordered units, shards, what is skipped; the
                                            workers' per-chunk work (documents, tokens, framing)
  4  readers, report                        units as chunks: decompression, first-bytes and change checks;
                                            the [UNK] report per dataset, unit and input
  5  results                                results into the datasets; counts, metadata
  6  pipeline, vocab_builder                preprocess(): the driver; WordPiece vocab training
"""
