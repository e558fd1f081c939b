"""Where this process sits in the job, and a job that ends together instead of hanging.

0  fail_fast, slurm, signals   timeouts for every process group and NCCL's error handling; srun's
                               node list; SIGTERM/SIGINT as a request to save and stop
0  extension_lock              a stale build lock of DeepSpeed's CPU comm op refused in one line, not
                               waited on forever
1  process_group               rendezvous (launcher, srun, plain process), the process group, barriers,
                               a flag the ranks agree on from host memory (the stop request)
"""
