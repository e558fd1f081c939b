#!/usr/bin/env bash
# Every GPU measurement of the project in one run (about 6 minutes on one H100/H200), for a machine
# that has a CUDA GPU. Each part has its own time limit, so one slow part cannot starve the others;
# results go to stdout and, when OUT is set (the device tool sets it), to $OUT/*.log.
#   bash bench/gpu_checks.sh
#  1. Triton kernels vs PyTorch at the two training shapes (GB/s, TFLOP/s, max |diff|)
#  2. training throughput and MFU at the stage-2 shape, DeepSpeed engine vs a plain PyTorch loop
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
LOGS="${OUT:-runs/gpu_checks}"
mkdir -p "$LOGS"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" \
    || { echo "gpu_checks: no CUDA GPU visible; nothing measured" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.log"

status=0
part() {  # part NAME SECONDS command...
    local name=$1 limit=$2; shift 2
    echo; echo "=== $name (limit ${limit}s) ==="
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "=== $name: exit status $rc ==="; status=1; }
}
part kernels 240 "$PYTHON" bench/bench_kernels.py
part train 240 "$PYTHON" bench/bench_train.py --gpu
exit $status
