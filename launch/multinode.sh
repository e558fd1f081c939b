#!/usr/bin/env bash
# Several nodes through DeepSpeed's launcher. Two ways to start it:
#
# 1. From the first node, over ssh (DeepSpeed runs pdsh; every node needs passwordless ssh from the first):
#      HOSTFILE=launch/hostfile launch/multinode.sh --micro-batch-size 32
# 2. Without ssh: run the same command on every node yourself (a cluster tool, a container per node, or
#    "2 nodes" on one machine), each with its index in the hostfile; no ssh or pdsh is needed:
#      node 0:  NODE_RANK=0 HOSTFILE=launch/hostfile launch/multinode.sh --micro-batch-size 32
#      node 1:  NODE_RANK=1 HOSTFILE=launch/hostfile launch/multinode.sh --micro-batch-size 32
#    (deepspeed --no_ssh --node_rank N). All nodes must agree on MASTER_ADDR/MASTER_PORT: by default
#    the first hostfile entry and 29500, so the first entry must be an address every node can reach.
#
# Environment: HOSTFILE (launch/hostfile), DS_CONFIG (ds_configs/stage1.json), MASTER_ADDR (the first
# host of the hostfile), MASTER_PORT (29500), NODE_RANK (unset: mode 1; set: mode 2, this node's line of
# the hostfile, from 0), NO_SSH=1 (mode 2; then NODE_RANK is required), DEEPSPEED (the launcher binary).
#
# The global batch of the recipe (512 in stage 1, 128 in stage 2) must divide by micro-batch x GPUs:
# on 2 nodes x 8 GPUs use --micro-batch-size 32 for stage 1 (32 x 16 = 512) and 8 for stage 2
# (or keep the micro-batch and pass --global-batch-size to change the recipe).
#
# A rank that dies ends the job: its node's launcher stops the other local ranks and exits non-zero,
# and the ranks of the other nodes fail in their next collective (at once when the dead peer's
# connections close, else after --distributed-timeout-minutes, default 10), ending their launchers too.
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTFILE="${HOSTFILE:-launch/hostfile}"
DS_CONFIG="${DS_CONFIG:-ds_configs/stage1.json}"
MASTER_ADDR="${MASTER_ADDR:-$(head -n 1 <(grep -v '^#' "$HOSTFILE" | grep -v '^\s*$') | awk '{print $1}')}"
MASTER_PORT="${MASTER_PORT:-29500}"
launch=(--hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
if [[ -z "${NODE_RANK:-}" && "${NO_SSH:-0}" != 1 ]]; then
    # pdsh mode: DeepSpeed's multi-node runner forwards SIGTERM/SIGINT to every node itself.
    exec "${DEEPSPEED:-deepspeed}" "${launch[@]}" pretrain_gpt.py --ds_config "$DS_CONFIG" "$@"
fi
if [[ ! "${NODE_RANK:-}" =~ ^[0-9]+$ ]]; then
    echo "multinode.sh: NO_SSH=1 needs NODE_RANK=<this node's line in $HOSTFILE, counting from 0>" >&2
    exit 2
fi
# No-ssh mode starts this node's ranks through DeepSpeed's single-node path, which does not forward
# signals: run_deepspeed does (SLURM pre-emption or Ctrl-C still saves a checkpoint).
source launch/common.sh
run_deepspeed "${launch[@]}" --no_ssh --node_rank "$NODE_RANK" pretrain_gpt.py --ds_config "$DS_CONFIG" "$@"
