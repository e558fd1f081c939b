"""pretrain_gpt.py with bf16 allowed on CPU, so tests can read a real BF16_Optimizer checkpoint.

pretrain_gpt.py refuses bf16 without a bf16-capable GPU (preflight.check_device), because CPU bf16
training is slow and not what a user wants. DeepSpeed's BF16_Optimizer itself runs on CPU/gloo,
and writes the same files it writes on GPUs (bf16_zero_pp_rank_<r>_mp_rank_00_optim_states.pt,
bf16 module copies), which is what the converter tests need. Everything else is the real run.

    deepspeed --num_gpus 3 tests/support/cpu_bf16_pretrain.py --ds_config CONFIG_WITH_BF16 ...
"""

from megatron_zh.cli import run_cli
from megatron_zh.training import preflight

preflight.check_device = lambda run: None

if __name__ == "__main__":
    from megatron_zh.training.pretrain import main

    run_cli(main)
