#!/usr/bin/env bash
# The tiny recipe: a synthesized English corpus, end to end on a laptop-class CPU.
#
#   bash recipes/tiny/run.sh                          # all stages
#   bash recipes/tiny/run.sh --stage 3 --stop-stage 3 # only training
#   bash recipes/tiny/run.sh --stage 3 --exp /path/exp_aug --augment "--noise data/noise/train.json"
#                                                     # another model on the same corpus (recipes/noisy)
#   bash recipes/tiny/run.sh --data data_all --exp exp_all --engines espeak,flite,festival
#                                                     # a corpus of more synthesizers, its own model
#
# Stages (a marker file per finished stage, so a rerun skips what is done; delete
# recipes/tiny/exp to retrain, recipes/tiny/data too to start over):
#   1  synthesize the corpus with eSpeak NG (grammar sentences, several voices; --engines adds
#      flite's and festival's voices where installed)
#   2  manifests: check every file and transcript (bad ones -> *.rejects.json)
#   3  train a DS2 model (conv + BatchNorm-GRU, CTC)
#   4  greedy-decode dev and test (saving the acoustic model's log-probs)
#   5  score greedy (WER / CER)
#   6  build a 4-gram KenLM from the training transcripts + more grammar text (no dev/test sentences)
#   7  tune the LM weight alpha and word bonus beta on dev (cached log-probs)
#   8  LM beam search on dev and test with the tuned values, score; results table
set -euo pipefail

stage=1
stop_stage=100
n_train=6000
n_dev=200
n_test=200
seed=0
epochs=3
threads=0 # torch CPU threads (0: all cores)
exp=exp
engines=espeak # synthesizers of the corpus (ds2 prepare synth --engines)
data=data # corpus folder (relative to recipes/tiny, or absolute)
train_opts="" # extra `ds2 train` options (--augment or --train-opts), e.g. "--noise N.json --rir R.json" (paths
           # relative to recipes/tiny) or "--no-bidirectional --normalize online --lookahead 3" (recipes/streaming)

usage="Usage: $0 [--stage N] [--stop-stage N] [--n-train $n_train] [--n-dev $n_dev] [--n-test $n_test] [--seed $seed] [--epochs $epochs] [--threads $threads] [--exp $exp] [--data $data] [--engines $engines] [--train-opts \"DS2 TRAIN OPTIONS\"]"
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --n-train) n_train=$2; shift 2 ;;
    --n-dev) n_dev=$2; shift 2 ;;
    --n-test) n_test=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --engines) engines=$2; shift 2 ;;
    --augment|--train-opts) train_opts=$2; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "unknown option $1"; echo "$usage"; exit 1 ;;
  esac
done

cd "$(dirname "$0")"
mkdir -p $data $exp
done_marker() { if [ "$1" -le 2 ]; then echo "$data/.stage$1.done"; else echo "$exp/.stage$1.done"; fi; }
source ../common.sh

if run_stage 1; then
  log "Stage 1: synthesize $n_train/$n_dev/$n_test utterances ($engines)"
  "$ds2" prepare synth $data/synth --n-train $n_train --n-dev $n_dev --n-test $n_test --seed $seed --engines $engines
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
  # --lr and --grad-clip are for the mean loss per utterance of a minibatch of --batch-size
  # utterances (all ranks together under torchrun): the same update on one process or N.
  "$ds2" train $data/train.json $data/dev.json --out-dir $exp \
    --epochs $epochs --batch-size 16 --optimizer adam --lr 2e-3 --anneal 2 --grad-clip 400 \
    --conv-layers 2 --conv-channels 32,16 --conv-kernels 41x11,21x11 --conv-strides 2x3,2x1 \
    --rnn-type gru --rnn-layers 2 --rnn-hidden 256 --fc-hidden 256 \
    --threads $threads --seed $seed --checkpoint-every 100 $train_opts $( [ -f $exp/last.pt ] && echo --resume )
  touch "$(done_marker 3)"
fi

if run_stage 4; then
  log "Stage 4: greedy-decode dev and test with $exp/best.pt"
  for split in dev test; do
    "$ds2" decode $exp/best.pt $data/$split.json -o $exp/decode_$split.json --save-logprobs $exp/logprobs_$split.pt
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

if run_stage 6; then
  log "Stage 6: 4-gram LM from the training transcripts + 50000 grammar sentences (dev/test sentences excluded)"
  "$python" local/lm_text.py $data/train.json $data/dev.json $data/test.json -o $data/lm_text.txt --extra 50000
  "$ds2" lm build $data/lm_text.txt -o $exp/lm --order 4 --memory 500M
  touch "$(done_marker 6)"
fi

if run_stage 7; then
  log "Stage 7: tune alpha/beta on dev (tune.png, tune.csv, decoding.json in $exp)"
  "$ds2" tune $exp/logprobs_dev.pt $data/dev.json --lm $exp/lm/lm.bin -o $exp
  touch "$(done_marker 7)"
fi

if run_stage 8; then
  log "Stage 8: LM beam search on dev and test (alpha/beta from $exp/decoding.json), score"
  for split in dev test; do
    "$ds2" decode $exp/best.pt $data/$split.json -o $exp/decode_lm_$split.json --lm $exp/lm/lm.bin \
      --logprobs $exp/logprobs_$split.pt --no-progress
    "$ds2" score $exp/decode_lm_$split.json --json $exp/score_lm_$split.json > $exp/score_lm_$split.txt
  done
  touch "$(done_marker 8)"
fi

if [ -f $exp/score_test.json ]; then
  log "Results (details in $exp/score_*.txt):"
  "$python" local/results_table.py $exp
fi

log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
