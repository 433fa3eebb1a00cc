#!/usr/bin/env bash
# The longform recipe: DS2's data pipeline for long recordings with flawed transcripts
# (section 5.1: align, segment, filter) and long-form transcription, with the tiny recipe's
# model and LM, on synthesized recordings of unseen voices.
#
#   bash recipes/longform/run.sh                          # all stages
#   bash recipes/longform/run.sh --stage 6 --stop-stage 6 # only the training comparison
#
# Stages (a marker file per finished stage; delete recipes/longform/exp to redo):
#   1  the tiny recipe's model and LM (runs recipes/tiny/run.sh when they are missing)
#   2  alignment accuracy: ds2 align on the tiny test set against eSpeak's word start times
#   3  long recordings: unseen voices, pauses, flawed transcripts (local/make_longform.py)
#   4  ds2 segment: forced alignment, cuts at long pauses, DS2's filter features
#   5  ds2 filter: trained on the first recordings' labelled segments, applied to the others
#   6  fine-tune the tiny model on all segments and on the kept ones; tiny test WER of each
#   7  transcribe the long recordings whole (LM) and decode the same speech as utterances;
#      transcribe the tiny test set with word confidences
#   8  the longest recording: one hour, aligned; peak memory
set -euo pipefail

stage=1
stop_stage=100
recordings=12
minutes=4
labelled=6
longest_minutes=60
seed=0

usage="Usage: $0 [--stage N] [--stop-stage N] [--recordings $recordings] [--minutes $minutes] [--labelled $labelled] [--longest-minutes $longest_minutes] [--seed $seed]"
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --recordings) recordings=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --labelled) labelled=$2; shift 2 ;;
    --longest-minutes) longest_minutes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "unknown option $1"; echo "$usage"; exit 1 ;;
  esac
done

cd "$(dirname "$0")"
data=data
exp=exp
tiny=../tiny
mkdir -p $data $exp
source ../common.sh

model=$tiny/exp/best.pt
lm=$tiny/exp/lm/lm.bin

if run_stage 1; then
  if [ ! -f $model ] || [ ! -f $lm ] || [ ! -f $tiny/exp/decoding.json ]; then
    log "Stage 1: the tiny recipe's model and LM are missing: running recipes/tiny/run.sh"
    bash $tiny/run.sh
  fi
  log "Stage 1: model $model, LM $lm"
  done_stage 1
fi

if run_stage 2; then
  log "Stage 2: align the tiny test set (unseen voices); word starts against eSpeak's"
  "$ds2" align $model $tiny/data/synth/test.json -o $exp/align_test --plot 0 --no-progress
  done_stage 2
fi

if run_stage 3; then
  log "Stage 3: $recordings recordings of ~$minutes min with flawed transcripts"
  "$python" local/make_longform.py $data --recordings $recordings --minutes $minutes --seed $seed \
    --exclude $tiny/data/train.json $tiny/data/dev.json $tiny/data/test.json $tiny/data/lm_text.txt
  done_stage 3
fi

if run_stage 4; then
  log "Stage 4: segment (align, cut at long pauses, filter features)"
  "$ds2" segment $model $data/long.json -o $exp/seg --truth-field truth_words --no-progress
  done_stage 4
fi

if run_stage 5; then
  log "Stage 5: filter: train on the first $labelled recordings' segments, apply to the rest"
  "$python" local/split_segments.py $exp/seg/segments.json --labelled $labelled -o $exp/filter
  "$ds2" filter $exp/filter/labelled.json -o $exp/filter/labelled
  "$ds2" filter $exp/filter/held_out.json -o $exp/filter/held_out \
    --classifier $exp/filter/labelled/classifier.json --truth-field reference
  cat $exp/filter/labelled/kept.json $exp/filter/held_out/kept.json > $exp/filter/kept_all.json
  done_stage 5
fi

if run_stage 6; then
  log "Stage 6: fine-tune the tiny model on all segments and on the kept ones (1 epoch each)"
  cp $tiny/exp/score_test.json $exp/score_base.json
  for name in all kept; do
    segments=$exp/seg/segments.json
    [ $name = kept ] && segments=$exp/filter/kept_all.json
    "$ds2" train $segments $tiny/data/dev.json -o $exp/train_$name --init $model \
      --epochs 1 --batch-size 16 --optimizer adam --lr 3e-4 --seed $seed --checkpoint-every 100 --no-progress
    "$ds2" decode $exp/train_$name/best.pt $tiny/data/test.json -o $exp/decode_test_$name.json --no-progress
    "$ds2" score $exp/decode_test_$name.json --json $exp/score_$name.json
  done
  done_stage 6
fi

if run_stage 7; then
  log "Stage 7: transcribe the long recordings whole (LM), and the same speech as utterances"
  "$ds2" transcribe $model $data/wav/rec_*.wav --lm $lm --format json -o $exp/transcribe_long.json --no-progress
  "$ds2" decode $model $data/utterances.json -o $exp/decode_utterances.json --lm $lm --no-progress
  "$ds2" transcribe $model $tiny/data/synth/wav/test/*.wav --lm $lm --format json -o $exp/transcribe_test.json \
    --no-progress
  done_stage 7
fi

if run_stage 8; then
  log "Stage 8: one recording of $longest_minutes min, aligned: peak memory"
  "$python" local/make_longform.py ${data}_longest --recordings 1 --minutes $longest_minutes --seed $((seed + 1)) \
    --exclude $tiny/data/train.json $tiny/data/lm_text.txt
  "$python" local/measure.py $exp/longest/measure.json ${data}_longest/long.json -- \
    "$ds2" align $model ${data}_longest/long.json -o $exp/longest --no-progress
  done_stage 8
fi

log "Results (exp/results.json):"
"$python" local/report.py $data $exp
log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
