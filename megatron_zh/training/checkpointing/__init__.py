"""What a run does with checkpoints: where it starts, what it checks first, how it saves and resumes.

The on-disk format is megatron_zh.checkpoint's; this package decides and coordinates the ranks.

  start        StartPoint (scratch, resume or finetune) and TrainState; checking a checkpoint fits the run
  start_guard  before the process group: --load exists, --save is writable and is not overwritten,
               the checkpoint to start from is complete; what a killed save left behind
  rng          every rank's random state saved, and the one each rank continues on resume
  save_guard   a save that fails on any rank fails on every rank, and leaves `latest` as it was
  save         save_checkpoint (all ranks write, rank 0 commits `latest`), pruning old ones
  resume       load_checkpoint into the engine; on another number of ranks through a universal copy
"""
