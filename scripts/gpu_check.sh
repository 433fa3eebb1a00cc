#!/usr/bin/env bash
# The CUDA CTC kernel on a GPU machine, in one go: build the extension, run the CTC tests
# (the requires_cuda ones included), then the benchmark against torch in float32 and bf16.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default: $OUT, else gpu_check/
#
# Needs only torch (2.11, CUDA build), numba, pytest and nvcc there: it uses the system
# Python (PYTHON=... to choose another) with the repository on PYTHONPATH and skips
# tests/conftest.py (whose audio helpers need soundfile).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check}}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

log() { echo "$(date '+%H:%M:%S') $*"; }
log "device"
$python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee "$out/device.txt"
log "build the extension"
start=$(date +%s)
$python -c "from ds2 import ctc; ctc.build_cuda_extension(verbose=True)" > "$out/build.txt" 2>&1 || { tail -40 "$out/build.txt"; exit 1; }
log "built in $(( $(date +%s) - start )) s"
log "tests"
$python -m pytest -q --noconftest -p no:cacheprovider tests/test_ctc.py 2>&1 | tee "$out/tests.txt" | tail -15
log "benchmark, float32"
$python benchmarks/ctc.py --device cuda --csv "$out/ctc_gpu_float32.csv" 2>"$out/bench_float32.err" | tee "$out/ctc_gpu_float32.txt"
log "benchmark, bfloat16 logits"
$python benchmarks/ctc.py --device cuda --dtype bfloat16 --lengths ragged --csv "$out/ctc_gpu_bf16.csv" 2>"$out/bench_bf16.err" | tee "$out/ctc_gpu_bf16.txt"
log "done"
