#!/usr/bin/env bash
# Stage 1 of the published recipe on one node: seq 128, 1,000,000 steps, 64 sequences per GPU x 8 GPUs,
# lr 1e-4, bf16, ZeRO-1. Resumes from checkpoints/stage1 when it holds a checkpoint (safe to resubmit).
# Extra arguments override the config, e.g.:  launch/stage1.sh --data-path data/my_text_document
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_GPUS="${NUM_GPUS:-8}"
source launch/common.sh  # run_deepspeed: SIGTERM/SIGINT to this script reach every rank
run_deepspeed --num_gpus "$NUM_GPUS" pretrain_gpt.py --ds_config ds_configs/stage1.json "$@"
