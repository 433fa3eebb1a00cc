#!/usr/bin/env bash
# The tiny recipe: a synthesized English corpus, end to end on a laptop-class CPU.
#
#   bash recipes/tiny/run.sh                          # all stages
#   bash recipes/tiny/run.sh --stage 3 --stop-stage 3 # only training
#
# Stages (a marker file per finished stage, so a rerun skips what is done; delete
# recipes/tiny/exp to retrain, recipes/tiny/data too to start over):
#   1  synthesize the corpus with eSpeak NG (grammar sentences, several voices)
#   2  manifests: check every file and transcript (bad ones -> *.rejects.json)
#   3  train a DS2 model (conv + BatchNorm-GRU, CTC)
#   4  greedy-decode dev and test
#   5  score (WER / CER) and print the results table
set -euo pipefail

stage=1
stop_stage=100
n_train=6000
n_dev=200
n_test=200
seed=0
epochs=3
threads=0 # torch CPU threads (0: all cores)

usage="Usage: $0 [--stage N] [--stop-stage N] [--n-train $n_train] [--n-dev $n_dev] [--n-test $n_test] [--seed $seed] [--epochs $epochs]"
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --n-train) n_train=$2; shift 2 ;;
    --n-dev) n_dev=$2; shift 2 ;;
    --n-test) n_test=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "unknown option $1"; echo "$usage"; exit 1 ;;
  esac
done

recipe_dir=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$recipe_dir/../.." && pwd)
cd "$recipe_dir"
data=data
exp=exp
mkdir -p $data $exp

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (run.sh:${BASH_LINENO[0]}) $*"; }
done_marker() { if [ "$1" -le 2 ]; then echo "$data/.stage$1.done"; else echo "$exp/.stage$1.done"; fi; }
bash "$repo/scripts/setup.sh"
ds2="$repo/.venv/bin/ds2"
start_time=$(date +%s) # the elapsed time printed at the end excludes set-up

run_stage() { # run_stage N: true if stage N is in range and not yet done
  local n=$1
  [ "$stage" -le "$n" ] && [ "$stop_stage" -ge "$n" ] || return 1
  if [ -f "$(done_marker "$n")" ]; then
    log "Stage $n: already done ($(done_marker "$n")), skipping"
    return 1
  fi
  return 0
}

if run_stage 1; then
  log "Stage 1: synthesize $n_train/$n_dev/$n_test utterances with eSpeak NG"
  "$ds2" prepare synth $data/synth --n-train $n_train --n-dev $n_dev --n-test $n_test --seed $seed
  touch "$(done_marker 1)"
fi

if run_stage 2; then
  log "Stage 2: manifests (every file read and checked; rejects beside each manifest)"
  for split in train dev test; do
    "$ds2" prepare folder $data/synth/wav/$split $data/$split.json --jobs 2
  done
  touch "$(done_marker 2)"
fi

if run_stage 3; then
  log "Stage 3: train (log: $exp/train.log; curves: $exp/curves.png)"
  "$ds2" train $data/train.json $data/dev.json --out-dir $exp \
    --epochs $epochs --batch-size 16 --optimizer adam --lr 2e-3 --anneal 2 --grad-clip 400 \
    --conv-layers 2 --conv-channels 32,16 --conv-kernels 41x11,21x11 --conv-strides 2x3,2x1 \
    --rnn-type gru --rnn-layers 2 --rnn-hidden 256 --fc-hidden 256 \
    --threads $threads --seed $seed --checkpoint-every 100 $( [ -f $exp/last.pt ] && echo --resume )
  touch "$(done_marker 3)"
fi

if run_stage 4; then
  log "Stage 4: greedy-decode dev and test with $exp/best.pt"
  for split in dev test; do
    "$ds2" decode $exp/best.pt $data/$split.json -o $exp/decode_$split.json
  done
  touch "$(done_marker 4)"
fi

if run_stage 5; then
  log "Stage 5: score"
  for split in dev test; do
    "$ds2" score $exp/decode_$split.json --json $exp/score_$split.json > $exp/score_$split.txt
    log "$split:"
    cat $exp/score_$split.txt
  done
  touch "$(done_marker 5)"
fi

if [ -f $exp/score_test.json ]; then
  log "Results (greedy decoding; details in $exp/score_{dev,test}.txt):"
  "$repo/.venv/bin/python" - "$exp" <<'EOF'
import json, sys
exp = sys.argv[1]
print("| split | utterances | greedy WER % | greedy CER % |")
print("|-------|-----------:|-------------:|-------------:|")
for split in ("dev", "test"):
    s = json.load(open(f"{exp}/score_{split}.json"))
    print(f"| {split} | {s['n_utterances']} | {s['wer']:.2f} | {s['cer']:.2f} |")
EOF
fi

log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
