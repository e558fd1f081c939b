"""Pretraining with a DeepSpeed ZeRO engine (pretrain_gpt.py's package).

Members, lowest first; each imports only from members of lower layers:

  0  config, distributed              what the run is told, resolved (its own map); where this process
                                      sits in the job, the process group, fail-fast, SLURM, signals
  1  checkpointing                    where a run starts, the guards before it, save/commit, resume
  1  engine, loaders, metrics         the model inside deepspeed.initialize (compiled with --compile); the
                                      run's datasets and resumable loaders; throughput, MFU and where metrics go
  1  kernel_check                     the fused-op kernels of a run: a self-check on every rank, agreed
  2  preflight                        file and hardware checks before anything heavy starts
  2  validation_loss, plot            the validation loss over all ranks; the loss curve PNG
  3  loop                             the training loop
  4  pretrain                         main(): all of the above in order
"""
