"""Hugging Face GPT-2 (GPT2LMHeadModel + BertTokenizer folders), both ways.

0  names        our parameter names and config <-> Hugging Face GPT-2's
0  card_usage   the model card's generation call and normalisation note
1  model_card   the export's README.md: every number from the checkpoint and its run
2  importer     a folder (config.json, safetensors or bin, vocab.txt) -> our model
2  exporter     a checkpoint -> a folder, loaded back with transformers and checked before it appears
"""
