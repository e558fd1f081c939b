#!/usr/bin/env bash
# The default run, end to end, with nothing but PyPI (`make quickstart` installs first, then runs this):
#   fetch the real BERT-Chinese vocab and ~35,000 real Chinese reviews -> hold out 500 documents ->
#   preprocess both to .bin/.idx (the [UNK] share in the log) -> what the model sees (counts, lengths,
#   a training sample decoded) -> pretrain with the DeepSpeed ZeRO-1 engine (2 CPU ranks over gloo, the
#   tiny model, a few minutes; every GPU with the gpt2-distil model in bf16 when there are GPUs), the
#   held-out documents a validation source of their own -> evaluate on them -> export to Hugging Face
#   (self-checked) -> generate a sample -> loss-curve PNG -> summary of where everything is.
#
#   bash launch/quickstart.sh [--vocab-file FILE] [--input FILE] [--out DIR] [--train-iters N]
#                             [--prompt TEXT]
# Offline: give --vocab-file and --input (one document per line) and nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
BIN="$(dirname "$PYTHON")"
OUT=runs/quickstart
VOCAB=""
CORPUS=""
TRAIN_ITERS=""
PROMPT="这家酒店的服务"
HELD_OUT=500

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --vocab-file) VOCAB="$2"; shift 2 ;;
        --input) CORPUS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --train-iters) TRAIN_ITERS="$2"; shift 2 ;;
        --prompt) PROMPT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "quickstart: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

STEP=0
step() { STEP=$((STEP + 1)); printf '\n=== [%d/9] %s ===\n' "$STEP" "$*"; }
START=$(date +%s)
mkdir -p "$OUT"/data

step "default assets (real vocab and corpus from PyPI; skipped for what you pass)"
if [ -z "$VOCAB" ] || [ -z "$CORPUS" ]; then
    ASSETS=$("$PYTHON" tools/fetch_assets.py --cache-dir "$OUT/assets")
    [ -n "$VOCAB" ] || VOCAB=$(sed -n 1p <<<"$ASSETS")
    [ -n "$CORPUS" ] || CORPUS=$(sed -n 2p <<<"$ASSETS")
fi
for f in "$VOCAB" "$CORPUS"; do
    [ -f "$f" ] || { echo "quickstart: $f does not exist" >&2; exit 2; }
done
echo "vocab:  $VOCAB"
echo "corpus: $CORPUS ($(wc -l <"$CORPUS") lines)"

step "hold out the last $HELD_OUT documents for evaluation"
TOTAL=$(wc -l <"$CORPUS")
if [ "$TOTAL" -le $((HELD_OUT * 2)) ]; then
    echo "quickstart: $CORPUS has $TOTAL lines; need more than $((HELD_OUT * 2)) (one document per line)" >&2
    exit 2
fi
head -n $((TOTAL - HELD_OUT)) "$CORPUS" >"$OUT/data/train.txt.tmp" && mv "$OUT/data/train.txt.tmp" "$OUT/data/train.txt"
tail -n "$HELD_OUT" "$CORPUS" >"$OUT/data/heldout.txt.tmp" && mv "$OUT/data/heldout.txt.tmp" "$OUT/data/heldout.txt"
cp "$VOCAB" "$OUT/data/vocab.txt"
echo "train: $((TOTAL - HELD_OUT)) documents, held out: $HELD_OUT"

step "preprocess to Megatron .bin/.idx (the held-out documents too: a validation source)"
# --overwrite: a second quickstart into the same --out rebuilds its own datasets from the files just written.
"$PYTHON" tools/preprocess_data.py --input "$OUT/data/train.txt" --output-prefix "$OUT/data/corpus" \
    --vocab-file "$OUT/data/vocab.txt" --workers 2 --overwrite
"$PYTHON" tools/preprocess_data.py --input "$OUT/data/heldout.txt" --output-prefix "$OUT/data/heldout" \
    --vocab-file "$OUT/data/vocab.txt" --workers 1 --overwrite
DATA_PREFIX="$OUT/data/corpus_text_document"
HELDOUT_PREFIX="$OUT/data/heldout_text_document"

step "what the model sees: counts, [UNK] share, document lengths, training sample 0 decoded"
"$PYTHON" tools/inspect_data.py --data-path "$DATA_PREFIX" --vocab-file "$OUT/data/vocab.txt" --seq-length 128 \
    --plot "$OUT/lengths.png" --sample 0 | tee "$OUT/data_report.txt"

step "pretrain with the DeepSpeed ZeRO-1 engine"
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 0 ]; then
    RANKS=$GPUS
    DEVICE_FLAGS=(--model gpt2-distil --bf16 --micro-batch-size 32 --global-batch-size $((32 * GPUS)))
    TRAIN_ITERS="${TRAIN_ITERS:-2000}"
    echo "$GPUS GPU(s): gpt2-distil, bf16, $TRAIN_ITERS steps"
else
    RANKS=2
    DEVICE_FLAGS=()
    TRAIN_ITERS="${TRAIN_ITERS:-400}"
    echo "no GPU: 2 CPU ranks over gloo, the gpt2-tiny model, $TRAIN_ITERS steps (a few minutes on 2 cores)"
fi
CKPT="$OUT/checkpoints"
# A fresh run each time: a checkpoint left by an earlier quickstart would otherwise be resumed.
rm -rf "$CKPT"
"$BIN/deepspeed" --num_gpus "$RANKS" --master_port "${MASTER_PORT:-29512}" pretrain_gpt.py \
    --ds_config ds_configs/cpu_tiny.json --data-path "$DATA_PREFIX" --vocab-file "$OUT/data/vocab.txt" \
    --save "$CKPT" --load "$CKPT" --train-iters "$TRAIN_ITERS" --save-interval "$TRAIN_ITERS" \
    --eval-interval 50 --eval-iters 4 --log-interval 10 --valid-data-path "heldout=$HELDOUT_PREFIX" \
    "${DEVICE_FLAGS[@]}"

step "evaluate on the $HELD_OUT held-out documents"
"$PYTHON" tools/evaluate.py --checkpoint "$CKPT" --input "$OUT/data/heldout.txt" --seq-length 128 \
    | tee "$OUT/eval.json"

step "export to Hugging Face (GPT2LMHeadModel + BertTokenizer, self-checked against our logits)"
"$PYTHON" tools/convert_to_hf.py --checkpoint "$CKPT" --output "$OUT/hf" --overwrite

step "generate from the export"
"$PYTHON" tools/generate.py --hf "$OUT/hf" --prompt "$PROMPT" --max-new-tokens 48 --top-k 10 --top-p 0.9 \
    --temperature 0.9 --seed 1234 | tee "$OUT/sample.txt"

step "loss curve"
"$PYTHON" tools/plot_loss.py --metrics "$CKPT/metrics.jsonl" --output "$OUT/loss.png" \
    --title "quickstart: $(basename "$CORPUS"), $TRAIN_ITERS steps"

ELAPSED=$(( $(date +%s) - START ))
cat <<EOF

=== quickstart finished in $((ELAPSED / 60)) min $((ELAPSED % 60)) s ===
  data (.bin/.idx)        $DATA_PREFIX.{bin,idx}   ($(head -n 1 "$OUT/data_report.txt" | sed 's/.*; \[UNK\]/[UNK]/; s/;.*//'))
  held-out documents      $OUT/data/heldout.txt   (validation source "heldout": $HELDOUT_PREFIX)
  data report             $OUT/data_report.txt, document lengths $OUT/lengths.png
  checkpoints (DeepSpeed) $CKPT/$(cat "$CKPT/latest")   (metrics: $CKPT/metrics.jsonl, TensorBoard: $CKPT/tensorboard)
  held-out evaluation     $OUT/eval.json   $(cat "$OUT/eval.json")
  Hugging Face export     $OUT/hf   (GPT2LMHeadModel.from_pretrained / AutoTokenizer.from_pretrained)
  generated sample        $OUT/sample.txt
  loss curve              $OUT/loss.png   (train, validation split, validation source heldout)
EOF
