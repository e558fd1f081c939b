"""Checkpoints on disk: what a save directory holds, how it is read safely, and the weights in it.

Used by training (save, start, resume) and by convert/inference (read and write weights); it
imports neither. Modules, lowest first:

  layout          the names: `latest`, global_step<N>, model states, ZeRO shards, client_state.json
  safety          restricted unpickling of every checkpoint file (allowlist, --trust-checkpoint)
  client_state    ClientState: what a checkpoint stores beside DeepSpeed's state, and reading it
  master_weights  the fp32 master weights from the ZeRO shards, and putting them back into an engine
  universal       a DeepSpeed universal copy, cached beside a checkpoint, to resume on other rank counts
  weights         a whole model's fp32 weights read from a checkpoint, or written as a new one
"""
