#!/usr/bin/env bash
# Stage 2 on one node: seq 1024, 250,000 steps, 16 sequences per GPU x 8 GPUs, lr 5e-5, starting from
# stage 1's final weights (checkpoints/stage1) with a fresh optimizer, schedule and sample counter.
# Once checkpoints/stage2 holds a checkpoint, a resubmitted job resumes that instead.
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_GPUS="${NUM_GPUS:-8}"
source launch/common.sh  # run_deepspeed: SIGTERM/SIGINT to this script reach every rank
run_deepspeed --num_gpus "$NUM_GPUS" pretrain_gpt.py --ds_config ds_configs/stage2.json "$@"
