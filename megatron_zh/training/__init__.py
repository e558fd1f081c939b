"""Pretraining with a DeepSpeed ZeRO engine (pretrain_gpt.py's package).

One job per module, in the order a run uses them:
  config.py           the "pretrain" block of a ds_configs file (TrainConfig) and the resolved RunConfig
  deepspeed_config.py the DeepSpeed half made complete: batch sizes, lr schedule, precision
  arguments.py        Megatron-style command-line flags over the JSON file
  validation.py       file and hardware checks before anything heavy starts
  distributed.py      rendezvous (launcher, srun, or a plain process) and the process group
                      (slurm.py: srun's node list; fail_fast.py: timeouts, NCCL error handling)
  engine.py           the model inside deepspeed.initialize
  data.py             datasets and resumable loaders
  loop.py             the training loop; evaluation.py, metrics.py, signals.py what it calls
  checkpointing/      where a run starts, the guards before it, save/commit, resume (its own map)
  pretrain.py         main(): all of the above in order
"""
