#!/usr/bin/env bash
# Several nodes through DeepSpeed's launcher (pdsh over ssh). Run it on the first node of the hostfile:
#   HOSTFILE=launch/hostfile launch/multinode.sh --micro-batch-size 32
# The global batch of the recipe (512 in stage 1, 128 in stage 2) must divide by micro-batch x GPUs:
# on 2 nodes x 8 GPUs use --micro-batch-size 32 for stage 1 (32 x 16 = 512) and 8 for stage 2
# (or keep the micro-batch and pass --global-batch-size to change the recipe).
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTFILE="${HOSTFILE:-launch/hostfile}"
DS_CONFIG="${DS_CONFIG:-ds_configs/stage1.json}"
MASTER_ADDR="${MASTER_ADDR:-$(head -n 1 <(grep -v '^#' "$HOSTFILE" | grep -v '^\s*$') | awk '{print $1}')}"
MASTER_PORT="${MASTER_PORT:-29500}"
exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    pretrain_gpt.py --ds_config "$DS_CONFIG" "$@"
