"""The run's fused-op kernels, chosen once before the model is built: every rank self-checks, all agree.

Each rank runs the kernel self-check (`megatron_zh.ops.select_kernels`) on its own device, in the
run's dtype, at the shapes a training step uses (the run's micro-batch and sequence length: the
same compiled kernels and autotuning keys as the steps that follow). One all-reduce then makes an
op that failed on any rank fail on every rank, so all ranks run the same code and rank 0's record
of the choice is the job's.
"""

from __future__ import annotations

import torch

from megatron_zh import ops
from megatron_zh.model import kernel_uses
from megatron_zh.training.config.run_config import RunConfig
from megatron_zh.training.distributed.process_group import DistEnv, all_reduce_sum

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def rank_device() -> torch.device:
    """This rank's device, as DeepSpeed will place the model: the current CUDA device, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def choose_kernels(run: RunConfig, env: DistEnv) -> ops.KernelSelection:
    """`--kernels` resolved for this run (after the process group exists); KernelCheckError for --kernels
    triton where the kernels cannot run or one fails its check."""
    device, dtype = rank_device(), DTYPES[run.precision]
    uses = kernel_uses(run.model, run.micro_batch_size, run.train.data.seq_length)
    results = None
    if run.train.kernels != "torch" and uses and ops.triton_runs_on(device):
        results = ops.check_kernels(uses, device, dtype)
        names = list(results)
        failed_here: list[float | torch.Tensor] = [float(not all(r.ok for r in results[op])) for op in names]
        failing = all_reduce_sum(failed_here, device) if names else []
        results = ops.agree(results, {op: int(n) for op, n in zip(names, failing)}, env.world_size)
    return ops.select_kernels(run.train.kernels, uses, device, dtype, results=results)
