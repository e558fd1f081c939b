"""Pretrain the Chinese GPT-2 with DeepSpeed ZeRO.

    deepspeed --num_gpus 8 pretrain_gpt.py --ds_config ds_configs/stage1.json
    deepspeed --num_gpus 8 pretrain_gpt.py --ds_config ds_configs/stage2.json
    python pretrain_gpt.py --ds_config ds_configs/cpu_tiny.json      # one process, no launcher

Megatron-style flags override the config file (--train-iters, --save, --load, --lr ...);
`python pretrain_gpt.py --help` lists them. The work is in megatron_zh.training.
"""

from megatron_zh.cli import run_cli
from megatron_zh.training.pretrain import main

if __name__ == "__main__":
    run_cli(main)
