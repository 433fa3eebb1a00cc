#!/usr/bin/env bash
# Everything that needs a GPU, in one go (about 9 minutes on an H100), each part's failure
# recorded without stopping the later ones:
#   device      torch, CUDA and the GPU
#   deps        soundfile (ds2.audio imports it): installed, or from wheels in .whl/, or a stand-in
#   build       the CUDA CTC extension
#   gpu_tests   pytest -m requires_cuda over test_ctc, test_train, test_model, test_distributed
#               (the rest of those files runs in CI without a GPU)
#   train       `ds2 train` on the GPU: a tone corpus, 60 steps, then --resume to 120; checks that
#               the loss falls, the checkpoints and logs are written and the resume continues
#   parity      one training step of the same model and batch on the CPU and the GPU (fp32, TF32
#               off): logits, loss, gradients, BatchNorm statistics, eval logits, with tolerances
#   streaming   ds2.streaming on the GPU: batched streams equal the offline forward; 64 streams' speed
#   variants    benchmarks/rnn_variants.py: per-step cost of the recurrent variants (LSTM, clipped RNN,
#               recurrent BN, LayerNorm) against the cuDNN GRU, TorchScript loop against the eager loop
#   syncs       host synchronizations per training step (set_sync_debug_mode("warn")), ours must be 0
#   throughput  benchmarks/train_throughput.py, small and large, bf16: ours vs the plain-PyTorch DS2
#   ctc_bench   benchmarks/ctc.py, float32 and bf16 logits
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default: $OUT, else gpu_check/
#   PARTS="build train" bash scripts/gpu_check.sh   # some parts only (device and deps always run)
#   DEVICE=cpu bash scripts/gpu_check.sh /tmp/check # the parts that can, on the CPU: tries the script
#
# Needs torch (2.11, CUDA build), torchaudio, numba, pytest, typer, tqdm and nvcc: it uses the
# system Python (PYTHON=... to choose another) with the repository on PYTHONPATH and skips
# tests/conftest.py. soundfile is missing on the lent GPU machines and cannot be fetched there:
# carry its wheels in .whl/ (see README, "Many processes or GPUs") and they are installed into a
# temporary folder. Without them a stand-in module lets ds2 import; then the training run, which
# reads WAV files, is skipped and says so.
#
# OUT_DIR receives at most 6 files: gpu_check.log (all output), summary.txt, the CSVs of the
# benchmarks and details.tar.gz (each part's log, the training run's logs, the build log).
# DEADLINE (default 540 s) bounds the whole run: a part that would start after it is skipped,
# and each part's time limit is cut to what is left. Exit status: 1 if any part failed.
set -uo pipefail
script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$script")/.."

if [[ ${1:-} == --part ]]; then  # one part, run by the main script below under a time limit
  part=$2
else
  part=
fi

# ---------------------------------------------------------------------------------- the parts

part_device() {
  $python -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA',
torch.version.cuda, '| devices', torch.cuda.device_count(), '|', torch.cuda.get_device_name() if torch.cuda.is_available()
else 'no GPU', '| torch threads', torch.get_num_threads())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  if [[ $device == cuda ]]; then $python -c "import torch; assert torch.cuda.is_available(), 'no usable CUDA device'"; fi
}

part_build() {
  [[ $device == cuda ]] || { echo "SKIPPED: DEVICE=$device (the extension is for CUDA)"; return 77; }
  local start=$SECONDS
  if ! $python -c "from ds2 import ctc; ctc.build_cuda_extension(verbose=True)" > "$work/logs/build_verbose.log" 2>&1; then
    tail -40 "$work/logs/build_verbose.log"
    return 1
  fi
  echo "built in $((SECONDS - start)) s (cached in torch's extension folder for the later parts)"
}

part_gpu_tests() {
  [[ $device == cuda ]] || { echo "SKIPPED: DEVICE=$device (these tests need CUDA)"; return 77; }
  local deselect=() two="tests/test_distributed.py::test_two_gpus_with_nccl_equal_one_gpu"
  if [[ $($python -c "import torch; print(torch.cuda.device_count())") -lt 2 ]]; then
    deselect=(--deselect "$two"); echo "not run: $two (needs 2 GPUs)"
  elif ! $python -c "import espeakng_loader" 2>/dev/null; then
    deselect=(--deselect "$two"); echo "not run: $two (its corpus needs eSpeak: espeakng-loader is not installed)"
  fi
  $python -m pytest -q --noconftest -p no:cacheprovider -m requires_cuda "${deselect[@]}" \
    tests/test_ctc.py tests/test_train.py tests/test_model.py tests/test_distributed.py
}

part_train() {
  if [[ $soundfile != real ]]; then
    echo "SKIPPED: soundfile is not installed ($soundfile) and ds2's loader reads WAV files with it; carry .whl/"
    return 77
  fi
  local corpus=$work/train/corpus run=$work/train/run rc=0
  local args=(--device "$device" --epochs 1000 --batch-size 8 --optimizer adam --lr 2e-3 --anneal 1
              --checkpoint-every 20 --log-every 10 --num-workers 2 --no-progress
              --conv-layers 2 --conv-channels 32,16 --conv-kernels 41x11,21x11 --conv-strides 2x3,2x1
              --rnn-type gru --rnn-layers 2 --rnn-hidden 256 --fc-hidden 256)
  $python scripts/gpu_check.py corpus "$corpus" || return 1
  echo "--- ds2 train: 60 steps (the tiny recipe's model, Adam 2e-3, batch 8, precision auto)"
  $python -m ds2.cli train "$corpus/train.json" "$corpus/dev.json" -o "$run" "${args[@]}" --max-steps 60 || rc=1
  $python scripts/gpu_check.py check-train "$run" --steps 60 --device "$device" || rc=1
  echo "--- ds2 train --resume: to step 120"
  $python -m ds2.cli train "$corpus/train.json" "$corpus/dev.json" -o "$run" "${args[@]}" --max-steps 120 --resume || rc=1
  $python scripts/gpu_check.py check-train "$run" --steps 120 --resumed-from 60 --device "$device" || rc=1
  mkdir -p "$work/logs/train_run"
  cp "$run"/{log.csv,epochs.csv,train.log,run.json} "$work/logs/train_run/" 2>/dev/null
  return $rc
}

part_parity() {
  local rc=0
  $python scripts/gpu_check.py parity --device "$device" --config tiny || rc=1
  $python scripts/gpu_check.py parity --device "$device" --config small || rc=1
  return $rc
}

part_streaming() {
  $python scripts/gpu_check.py streaming --device "$device"
}

part_variants() {
  if [[ $device == cuda ]]; then
    $python benchmarks/rnn_variants.py --device cuda --batch 32 --steps 300 --hidden 256 --repeats 3
    $python benchmarks/rnn_variants.py --device cuda --batch 64 --steps 300 --hidden 800 --repeats 3 --no-eager
  else  # a smoke run
    $python benchmarks/rnn_variants.py --device cpu --batch 2 --steps 20 --hidden 16 --input 16 --repeats 1
  fi
}

part_syncs() {
  [[ $device == cuda ]] || { echo "SKIPPED: DEVICE=$device (set_sync_debug_mode sees CUDA only)"; return 77; }
  $python scripts/gpu_check.py syncs --device "$device" --configs tiny,small
}

part_throughput() {
  if [[ $device == cuda ]]; then
    $python benchmarks/train_throughput.py --device cuda --configs small,large --precision bf16 --repeats 3 \
      --steps 15 --csv "$out/throughput_cuda_bf16.csv"
  else  # a smoke run: the CPU figures take minutes (README)
    $python benchmarks/train_throughput.py --device cpu --configs tiny --batch 2 --seconds 2,3 --steps 1 \
      --repeats 1 --csv "$out/throughput_cpu_smoke.csv"
  fi
}

part_ctc_bench() {
  [[ $device == cuda ]] || { echo "SKIPPED: DEVICE=$device"; return 77; }
  local rc=0
  echo "--- float32 logits"
  $python benchmarks/ctc.py --device cuda --csv "$out/ctc_gpu_float32.csv" || rc=1
  echo "--- bfloat16 logits"
  $python benchmarks/ctc.py --device cuda --dtype bfloat16 --lengths ragged --csv "$out/ctc_gpu_bf16.csv" || rc=1
  return $rc
}

if [[ -n $part ]]; then
  "part_$part"
  exit $?
fi

# ---------------------------------------------------------------------------------- the run

out=${1:-${OUT:-gpu_check}}
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
deadline=${DEADLINE:-540}
parts="device ${PARTS:-build gpu_tests train parity streaming variants syncs throughput ctc_bench}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/ds2-gpu-check.XXXXXX")
mkdir -p "$work/logs"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export python device out work soundfile=missing

log() { echo "$(date '+%H:%M:%S') $*"; }
names=() codes=() times=() notes=()
record() { names+=("$1"); codes+=("$2"); times+=("$3"); notes+=("$4"); }

run_part() {  # run_part NAME LIMIT_SECONDS
  local name=$1 limit=$2 left start rc note
  left=$((deadline - SECONDS))
  if [[ " $parts " != *" $name "* ]]; then
    record "$name" - 0 "not asked for (PARTS)"; return
  fi
  if ((left < 30)); then
    log "== $name: SKIPPED, ${left} s left of DEADLINE=$deadline"
    record "$name" - 0 "skipped: no time left"; return
  fi
  ((limit > left)) && limit=$left
  log "== $name (at most $limit s)"
  start=$SECONDS
  timeout -k 10 "$limit" bash "$script" --part "$name" 2>&1 | tee "$work/logs/$name.log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) note=ok ;;
    77) note="skipped: $(grep -m1 '^SKIPPED' "$work/logs/$name.log" | cut -c10-)" ;;
    124|137) note="FAILED: timed out after $limit s" ;;
    *) note="FAILED (exit $rc)" ;;
  esac
  record "$name" "$rc" $((SECONDS - start)) "$note"
}

main() {
  log "device $device, python $python, out $out, work $work, deadline ${deadline} s, parts: $parts"
  run_part device 60

  # soundfile: ds2.audio imports it; the GPU machines have no wheel of it and no network.
  start=$SECONDS
  if $python -c "import soundfile" 2>/dev/null; then
    soundfile=real; note="installed"
  elif compgen -G ".whl/*.whl" >/dev/null && $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$work/site" .whl/*.whl && PYTHONPATH=$PYTHONPATH:$work/site $python -c "import soundfile"; then
    export PYTHONPATH=$PYTHONPATH:$work/site
    soundfile=real; note="from .whl/: $(cd .whl && ls *.whl | cut -d- -f1-2 | tr '\n' ' ')"
  else
    mkdir -p "$work/stand-in"
    cat > "$work/stand-in/soundfile.py" <<'EOF'
"""Stand-in written by scripts/gpu_check.sh where soundfile is not installed: ds2 imports, audio cannot be read."""


def __getattr__(name):
    raise AttributeError(f"soundfile.{name}: soundfile is not installed (scripts/gpu_check.sh's stand-in)")
EOF
    export PYTHONPATH=$PYTHONPATH:$work/stand-in
    soundfile=stand-in; note="stand-in: soundfile missing and no usable wheels in .whl/; audio cannot be read"
  fi
  log "== deps: soundfile $note"
  record deps 0 $((SECONDS - start)) "soundfile $note"

  run_part build 300
  run_part gpu_tests 180
  run_part train 240
  run_part parity 120
  run_part streaming 90
  run_part variants 120
  run_part syncs 120
  run_part throughput 300
  run_part ctc_bench 240

  local failed=0 i
  {
    echo
    echo "summary ($(date '+%Y-%m-%d %H:%M:%S'), ${SECONDS} s in all, device $device)"
    printf '%-11s %5s %6s  %s\n' part rc sec result
    for i in "${!names[@]}"; do
      printf '%-11s %5s %6s  %s\n' "${names[$i]}" "${codes[$i]}" "${times[$i]}" "${notes[$i]}"
    done
  } | tee "$out/summary.txt"
  for i in "${!names[@]}"; do [[ ${notes[$i]} == FAILED* ]] && failed=1; done
  tar -czf "$out/details.tar.gz" -C "$work" logs
  return $failed
}

main 2>&1 | tee "$out/gpu_check.log"
status=${PIPESTATUS[0]}
rm -rf "$work"
exit "$status"
