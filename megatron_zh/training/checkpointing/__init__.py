"""What a run does with checkpoints: where it starts, what it checks first, how it saves and resumes.

The on-disk format is megatron_zh.checkpoint's; this package decides and coordinates the ranks.

  0  start, rng, save_guard   StartPoint (scratch, resume or finetune), TrainState, whether a checkpoint
                              fits the run; every rank's random state; a save that fails on any rank
                              fails on every rank and leaves `latest` as it was
  1  start_guard              before the process group: --load exists, --save is writable and is not
                              overwritten, no newer checkpoint is left to be overwritten, the one to
                              start from is complete; then incomplete folders moved aside, never deleted
  1  save                     save_checkpoint (all ranks write, rank 0 commits `latest`), pruning
  1  resume                   load_checkpoint into the engine; on another number of ranks, a universal copy
"""
