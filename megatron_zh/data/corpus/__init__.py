"""Corpus files as they lie on disk: what each one is and how its bytes become text (torch-free).

0  charsets, zstd_stream   UTF-8 or not (GB18030, Big5, UTF-16); zstd that refuses a truncated file
1  formats, archives       the corpus formats table, what each looks like; .zip/.tar members, and
                           those skipped
"""
