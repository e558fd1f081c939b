"""megatron_zh: Megatron/DeepSpeed-style pretraining of the Chinese GPT-2 distil model.

Layers, lowest first. A module imports only from its own package and from lower layers; every
package below has a map of the same kind in its docstring (tests/test_layout.py reads them all and
checks every import, including those inside functions):

  0  errors, storage                           error types the tools turn into one line; storage errors
  1  fileio, log, progress, validators, paths  atomic files and folders; logging; rates, ETA; value
                                               checks; output vs input
  2  cli, knobs, assets                        the tools' main wrapper; config fields with flags;
                                               the default vocab and corpus from PyPI
  3  text, _helpers                            BERT-Chinese WordPiece, vocab fingerprint, the opt-in text
                                               normalisation, [UNK] tallies; the C++ index helper
  4  data, ops, optim                          corpora -> .bin/.idx -> samples; fused Triton kernels;
                                               UER-py's AdamW as a torch optimizer
  5  model                                     GPT-2
  6  checkpoint                                the checkpoint on disk: names, client state, fp32 masters,
                                               safe loading, whole-model weights
  7  training                                  DeepSpeed pretraining: config, loop, start/save/resume
  8  convert                                   Hugging Face and UER-py export and import
  9  inference                                 generation and evaluation
"""

__version__ = "0.1.0"
