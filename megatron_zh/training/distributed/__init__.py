"""Where this process sits in the job, and a job that ends together instead of hanging.

0  fail_fast, slurm, signals   timeouts for every process group and NCCL's error handling; srun's
                               node list; SIGTERM/SIGINT as a request to save and stop
1  process_group               rendezvous (launcher, srun, plain process), the process group, barriers
"""
