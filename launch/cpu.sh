#!/usr/bin/env bash
# Two CPU ranks over gloo with the tiny model (ds_configs/cpu_tiny.json): 120 steps, one minute of training
# on 2 cores (about 100 s with start-up); the loss falls from 9.9 to 6.7.
# The first call tokenizes the sampled CLUECorpusSmall into runs/cpu_tiny/data (the config's data_path);
# it reads the vocab and corpus from MEGATRON_ZH_DATA_DIR (default ../shared/data), or VOCAB / CORPUS.
# Extra arguments go to pretrain_gpt.py, e.g.:  launch/cpu.sh --train-iters 50 --log-interval 1
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
DATA_DIR="${MEGATRON_ZH_DATA_DIR:-../shared/data}"
VOCAB="${VOCAB:-$DATA_DIR/google_zh_vocab.txt}"
CORPUS="${CORPUS:-$DATA_DIR/CLUECorpusSmall_sampled.txt}"
OUT=runs/cpu_tiny/data
if [ ! -f "$OUT/clue_sampled_text_document.idx" ]; then
    mkdir -p "$OUT"
    cp "$VOCAB" "$OUT/google_zh_vocab.txt"
    "$PYTHON" tools/preprocess_data.py --input "$CORPUS" --output-prefix "$OUT/clue_sampled" \
        --vocab-file "$OUT/google_zh_vocab.txt" --workers 2
fi
# On CPU `--num_gpus` counts ranks (DeepSpeed's CPU accelerator); each rank takes its share of the cores.
# Do not add --bind_cores_to_rank unless numactl is installed.
source launch/common.sh  # run_deepspeed: SIGTERM/SIGINT to this script reach every rank
run_deepspeed --num_gpus 2 pretrain_gpt.py --ds_config ds_configs/cpu_tiny.json "$@"
