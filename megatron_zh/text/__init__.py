"""Text -> token ids: the BERT-Chinese WordPiece tokenizer and what it cannot see.

0  normalization, unknown_tokens   the opt-in text normalisation derived from the vocab (its table for the
                                   default vocab ships as normalization_bert_chinese.json); [UNK] tallies
1  tokenizer                       BertChineseTokenizer (ids = transformers.BertTokenizer's), the vocab
                                   fingerprint, the special tokens
"""
