#!/usr/bin/env bash
# The model family of DS2 and its normalization papers on the tiny corpus, trained for the same
# budget of wall time each and compared (issue 15): recurrent cells (GRU, LSTM, DS2's clipped
# simple RNN), normalizations of the recurrent layers (DS2's sequence-wise BatchNorm, recurrent
# BatchNorm, LayerNorm, none, with and without SortaGrad) and bigram outputs at time stride 3.
#
#   bash recipes/variants/run.sh                       # all stages (about 1.5 h on 2 cores)
#   bash recipes/variants/run.sh --minutes 20          # a larger budget per model
#   bash recipes/variants/run.sh --only "gru-bn lstm-bn"
#   bash recipes/variants/run.sh --data D --exp E --train-opts "--rnn-hidden 64"   # another corpus
#     (D/{train,dev,test}.json), folder or model size (options given last win)
#
# Stages (stage 1 has a marker, stage 2 one per model, stage 3 always runs; delete
# recipes/variants/exp to redo):
#   1  the tiny recipe's corpus (recipes/tiny stages 1-2) and a 4-gram LM of its training text
#   2  per model: ds2 train for --minutes of training (dev evaluated every --eval-minutes, and at
#      the end), greedy and LM decoding of dev and test with best.pt (alpha/beta fixed: the tiny
#      recipe's tuned 1.25/3.5 of 2026-12-02, the same for every model), scores
#   3  exp/results.md (the table) and exp/dev_cer.png (dev CER against training time)
set -euo pipefail

stage=1
stop_stage=100
minutes=10 # training budget per model (wall time of the training steps)
eval_minutes=1.5
threads=0
seed=0
alpha=1.25
beta=3.5
bigrams=300 # bigram vocabulary of the bigram model (plus the characters)
only=""
data=../tiny/data
exp=exp
train_opts=""

# name | ds2 train options beyond the tiny recipe's (every model: the tiny recipe's 2 conv layers
# with time stride 3, 2 bidirectional recurrent layers of 256 units, Adam 2e-3)
models=(
  "gru-bn|--rnn-type gru --rnn-norm batch"
  "rnn-bn|--rnn-type rnn --rnn-norm batch"
  "lstm-bn|--rnn-type lstm --rnn-norm batch"
  "gru-rbn|--rnn-type gru --rnn-norm recurrent"
  "gru-ln|--rnn-type gru --rnn-norm layer"
  "gru-none|--rnn-type gru --rnn-norm none --no-batch-norm"
  "gru-none-nosortagrad|--rnn-type gru --rnn-norm none --no-batch-norm --no-sortagrad"
  "gru-bn-bigrams|--rnn-type gru --rnn-norm batch --bigrams BIGRAMS"
)

usage="Usage: $0 [--stage N] [--stop-stage N] [--minutes $minutes] [--eval-minutes $eval_minutes] [--threads $threads] [--bigrams $bigrams] [--only \"NAME ...\"] [--data $data] [--exp $exp] [--train-opts \"DS2 TRAIN OPTIONS\"]"
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --eval-minutes) eval_minutes=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --bigrams) bigrams=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --data) data=$(realpath -m "$2"); shift 2 ;;
    --exp) exp=$(realpath -m "$2"); shift 2 ;;
    --train-opts) train_opts=$2; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "unknown option $1"; echo "$usage"; exit 1 ;;
  esac
done

cd "$(dirname "$0")"
tiny=../tiny
mkdir -p $exp
source ../common.sh

if run_stage 1; then
  log "Stage 1: the tiny corpus ($data) and a 4-gram LM ($exp/lm)"
  if [ ! -f $data/train.json ] || [ ! -f $data/dev.json ] || [ ! -f $data/test.json ]; then
    [ "$data" -ef $tiny/data ] || { echo "--data $data: no train.json, dev.json and test.json there"; exit 1; }
    bash $tiny/run.sh --stage 1 --stop-stage 2
  fi
  "$python" $tiny/local/lm_text.py $data/train.json $data/dev.json $data/test.json -o $exp/lm_text.txt --extra 50000
  "$ds2" lm build $exp/lm_text.txt -o $exp/lm --order 4 --memory 500M
  done_stage 1
fi

failed=()
rm -f "$(done_marker 2)" # stage 2 has no marker (its models have theirs); an earlier version left one
if run_stage 2; then
  for entry in "${models[@]}"; do
    name=${entry%%|*}
    opts=${entry#*|}
    opts=${opts//BIGRAMS/$bigrams}
    if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then continue; fi
    dir=$exp/$name
    if [ -f $dir/.done ]; then log "$name: done ($dir/.done), skipping"; continue; fi
    mkdir -p $dir
    log "Stage 2: $name ($opts): $minutes min of training -> $dir"
    "$ds2" train $data/train.json $data/dev.json --out-dir $dir \
      --epochs 100 --max-minutes $minutes --eval-minutes $eval_minutes \
      --batch-size 16 --optimizer adam --lr 2e-3 --anneal 2 --grad-clip 400 \
      --conv-layers 2 --conv-channels 32,16 --conv-kernels 41x11,21x11 --conv-strides 2x3,2x1 \
      --rnn-layers 2 --rnn-hidden 256 --fc-hidden 256 --threads $threads --seed $seed --checkpoint-every 100 \
      --no-progress $opts $train_opts $( [ -f $dir/last.pt ] && echo --resume ) > $dir/train.log 2>&1 \
      || { log "$name: training failed (see $dir/train.log)"; tail -5 $dir/train.log; failed+=("$name"); continue; }
    for split in dev test; do
      decode_and_score $split $data/$split.json $dir --save-logprobs $dir/logprobs_$split.pt
      decode_and_score lm_$split $data/$split.json $dir --logprobs $dir/logprobs_$split.pt \
        --lm $exp/lm/lm.bin --alpha $alpha --beta $beta
    done
    log "$name: test WER greedy $(awk '$1 == "WER" {print $NF}' $dir/score_test.txt), LM $(awk '$1 == "WER" {print $NF}' $dir/score_lm_test.txt)"
    touch $dir/.done
  done
  # no stage marker: each model has its own (.done), and a later --only may name other models
fi

if run_stage 3; then
  log "Stage 3: the table ($exp/results.md) and the plot ($exp/dev_cer.png)"
  "$python" local/compare.py $exp --minutes $minutes -o $exp/results.md --plot $exp/dev_cer.png
  rm -f "$(done_marker 3)" # the table is rebuilt on every run: models may have been added
fi

[ -f $exp/results.md ] && cat $exp/results.md
if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED: ${failed[*]} (their train.log says why; a rerun retries them)"
  exit 1
fi
log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
