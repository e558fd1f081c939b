"""Checkpoints on disk: what a save directory holds, how it is read safely, and the weights in it.

Used by training (save, start, resume) and by convert/inference (read and write weights); it
imports neither.

  0  layout, safety          the names: `latest`, global_step<N>, model states, ZeRO shards,
                             client_state.json, folders moved aside; restricted unpickling of every
                             checkpoint file, and what a damaged one looks like
  1  client_state            ClientState: what a checkpoint stores beside DeepSpeed's state, and reading it
  1  master_weights          the fp32 master weights from the ZeRO shards, and putting them back into an engine
  1  universal               a DeepSpeed universal copy, cached beside a checkpoint, to resume on other rank counts
  2  completeness            whether a folder holds every rank's files, from names, sizes and zip structure
                             (no unpickling); moving one aside instead of deleting it
  2  weights                 a whole model's fp32 weights read from a checkpoint, or written as a new one
"""
