#!/usr/bin/env bash
# The GPU acceptance run: every GPU measurement of the project in one go, for one H100/H200, in at most
# 8 minutes. Each part has its own time limit (their sum, 470 s, stays under 8 minutes with the start-up;
# first estimates: cold Triton and inductor compiles dominate, so adjust them after the first run),
# so one slow part cannot starve the others; a part that fails or times out is reported and the next runs.
# Output goes to stdout and, per part, to $OUT/NAME.log (OUT: the device tool's folder; else runs/gpu_checks),
# and one summary table ends it.
#   bash bench/gpu_checks.sh                 # on a CUDA GPU
#   bash bench/gpu_checks.sh --cpu-dry-run   # every part at tiny shapes on CPU: checks the script, measures nothing
#
#  selfcheck     the start-up kernel self-check in bf16 at both stage shapes, flash and fused-softmax paths
#                (pass, score = error/tolerance; compiles the kernels the later parts reuse)
#  kernels       Triton kernels vs PyTorch at both stage shapes (GB/s, TFLOP/s, max diff)
#  train-stage1  tokens/s and MFU at the stage-1 shape (seq 128, mb 64), eager vs --compile, same process
#  train-stage2  the same at the stage-2 shape (seq 1024, mb 16)
#  memory        peak memory at the stage-2 shape with and without the fused LM-head loss
#  run           a short gpt2-distil bf16 training run through pretrain_gpt.py: the loss must fall
set -uo pipefail
cd "$(dirname "$0")/.."

# The pretrain_gpt.py flags that turn the fused LM-head loss off and on (model/lm_loss.py; the default is on).
FUSED_LOSS_OFF="${FUSED_LOSS_OFF:---lm-loss logits}"
FUSED_LOSS_ON="${FUSED_LOSS_ON:---lm-loss fused}"

DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
LOGS="${OUT:-runs/gpu_checks}"
mkdir -p "$LOGS"
: > "$LOGS/parts.tsv"
export TRITON_CACHE_AUTOTUNING=1  # later parts reuse the autotuning of earlier ones (same shapes)
unset TRITON_INTERPRET  # the dry runs of the kernel scripts set it themselves; training runs PyTorch code on CPU
if [ "$DRY" = 1 ]; then
    echo "gpu_checks: CPU dry run at tiny shapes: checks that every part runs, measures nothing"
else
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" \
        || { echo "gpu_checks: no CUDA GPU visible; nothing measured (--cpu-dry-run checks the script)" >&2; exit 2; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.log"
fi

status=0
part() {  # part NAME GPU_SECONDS command...   (a dry run allows 600 s: the CPU is slow, not the GPU)
    local name=$1 limit=$2; shift 2
    [ "$DRY" = 1 ] && limit=600
    echo; echo "=== $name (limit ${limit}s) ==="
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$LOGS/parts.tsv"
    [ "$rc" -eq 0 ] || { echo "=== $name: exit status $rc ==="; status=1; }
}

memory_variants=(--variant "logits=$FUSED_LOSS_OFF" --variant "fused=$FUSED_LOSS_ON")
compare=(--no-baseline --variant "eager=" --variant "compiled=--compile")

if [ "$DRY" = 0 ]; then
    part selfcheck 90 "$PYTHON" bench/kernel_self_check.py --impls flash,softmax
    part kernels 100 "$PYTHON" bench/bench_kernels.py
    part train-stage1 80 "$PYTHON" bench/bench_train.py --gpu --stage 1 --steps 10 --warmup 3 --repeats 2 "${compare[@]}"
    part train-stage2 90 "$PYTHON" bench/bench_train.py --gpu --stage 2 --steps 10 --warmup 3 --repeats 2 "${compare[@]}"
    part memory 40 "$PYTHON" bench/bench_train.py --gpu --stage 2 --steps 3 --warmup 2 --repeats 1 --no-baseline \
        "${memory_variants[@]}"
    part run 70 "$PYTHON" bench/short_run.py
else
    tiny=(--ranks 1 --seq-length 32 --micro-batch-size 2 --steps 2 --warmup 2 --repeats 1)
    part selfcheck 0 "$PYTHON" bench/kernel_self_check.py --cpu-dry-run --impls flash,softmax
    part kernels 0 "$PYTHON" bench/bench_kernels.py --interpret --shapes stage1
    part train-stage1 0 "$PYTHON" bench/bench_train.py "${tiny[@]}" "${compare[@]}"
    part train-stage2 0 "$PYTHON" bench/bench_train.py "${tiny[@]}" "${compare[@]}"
    part memory 0 "$PYTHON" bench/bench_train.py "${tiny[@]}" --no-baseline "${memory_variants[@]}"
    part run 0 "$PYTHON" bench/short_run.py --cpu-dry-run
fi

echo
"$PYTHON" bench/gpu_checks_summary.py "$LOGS"
exit $status
