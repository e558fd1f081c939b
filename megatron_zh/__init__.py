"""megatron_zh: Megatron/DeepSpeed-style pretraining of the Chinese GPT-2 distil model.

Layers, lowest first. A module imports only from its own package and from lower layers
(tests/test_layout.py reads this table and checks every import, including those inside functions):

  0  errors, storage                   error types the tools turn into one line; storage errors (OSError) too
  1  fileio, log, progress, validators, paths  atomic writes; logging; rates, ETA; value checks; output vs input
  2  cli, knobs, assets                 the tools' main wrapper; config fields with flags; default vocab/corpus
  3  tokenizer, _helpers                BERT-Chinese WordPiece, vocab fingerprint; the C++ index helper
  4  data, ops                          .bin/.idx corpora, datasets, samplers; fused Triton kernels
  5  vocab_builder, model               WordPiece vocab training; GPT-2
  6  checkpoint                         the checkpoint on disk: names, client state, fp32 masters, safe loading
  7  training                           DeepSpeed pretraining: config, loop, start/save/resume
  8  convert                            Hugging Face and UER-py export and import
  9  inference                          generation and evaluation
"""

__version__ = "0.1.0"
