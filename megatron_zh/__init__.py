"""megatron_zh: Megatron/DeepSpeed-style pretraining of the Chinese GPT-2 distil model.

Layers, lowest first (a module imports only from layers below it):
  errors, fileio, log  ->  tokenizer  ->  data, ops  ->  model  ->  training, convert
"""

__version__ = "0.1.0"
