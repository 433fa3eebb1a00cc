#!/usr/bin/env bash
# The noisy recipe: does noise augmentation (DS2 section 5.2) make the tiny model robust, and
# do more synthesizers bring it closer to people? The tiny recipe's clean model against the
# same recipe trained with augmentation, scored on the clean test set and on copies of it in
# noise never heard in training and in rooms never used in training; and models trained on a
# corpus of all synthesizers (eSpeak NG, flite, festival), with and without augmentation,
# scored on real human speech beside the eSpeak-only ones.
#
#   bash recipes/noisy/run.sh                          # all stages
#   bash recipes/noisy/run.sh --stage 5                # only decoding and the table again
#
# Stages (a marker file per finished stage; delete recipes/noisy/exp to redo):
#   1  the tiny recipe's corpus, clean model and LM (runs recipes/tiny/run.sh when missing)
#   2  noise (generated: white, pink, brown, hum, babble of voices heard nowhere else) and
#      simulated rooms; train and test noises and rooms kept apart (data/*/split.json)
#   3  noisy test sets at 0, 5, 10, 20 dB SNR (test noises) and a reverberant one (test rooms),
#      written once as audio; real human speech from Debian's pocketsphinx-testdata
#   4  the tiny recipe's training, decoding, LM tuning with augmentation: noise on 40% of the
#      utterances at 0-20 dB, 1-3 clips each; reverberation on 20%; the first epoch (SortaGrad's
#      shortest-first one) clean  (exp/aug)
#   5  a corpus of all synthesizers installed (data/all: eSpeak NG, flite, festival; dev and
#      test voices unseen in training, festival's only there) and the tiny recipe on it (exp/all)
#   6  the same with augmentation (exp/all_aug)
#   7  the models on the test sets, greedy and with the LM (each with its own tuned alpha/beta):
#      the eSpeak models on all of them, the all-synthesizer models on clean, 5 dB, the
#      all-synthesizer test set and real speech
#   8  the tables (exp/results.md) and WER against SNR (exp/wer_snr.png)
set -euo pipefail

stage=1
stop_stage=100
snrs="0 5 10 20"
noise_prob=0.4
reverb_prob=0.2
augment_from=2
engines=espeak,flite,festival
threads=0 # torch CPU threads of each training (0: all cores)
seed=0

usage="Usage: $0 [--stage N] [--stop-stage N] [--snrs \"$snrs\"] [--noise-prob $noise_prob] [--reverb-prob $reverb_prob] [--augment-from $augment_from] [--engines $engines] [--threads $threads] [--seed $seed]"
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --snrs) snrs=$2; shift 2 ;;
    --noise-prob) noise_prob=$2; shift 2 ;;
    --reverb-prob) reverb_prob=$2; shift 2 ;;
    --augment-from) augment_from=$2; shift 2 ;;
    --engines) engines=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "unknown option $1"; echo "$usage"; exit 1 ;;
  esac
done

cd "$(dirname "$0")"
here=$PWD
data=data
exp=exp
tiny=../tiny
mkdir -p $data $exp
source ../common.sh

if run_stage 1; then
  if [ ! -f $tiny/exp/.stage8.done ]; then
    log "Stage 1: the tiny recipe's model is missing: running recipes/tiny/run.sh"
    bash $tiny/run.sh
  fi
  log "Stage 1: clean model $tiny/exp/best.pt"
  done_stage 1
fi

if run_stage 2; then
  log "Stage 2: noise and rooms (train and test apart: $data/noise/split.json, $data/rirs/split.json)"
  "$ds2" prepare noise $data/noise --seed $seed
  "$ds2" prepare rirs $data/rirs --seed $seed
  done_stage 2
fi

sets="clean"
for snr in $snrs; do sets="$sets snr$snr"; done
sets="$sets reverb"
sphinx_data=/usr/share/pocketsphinx/test/data

if run_stage 3; then
  log "Stage 3: noisy test sets ($sets), from $tiny/data/test.json with test noises and rooms"
  for snr in $snrs; do
    "$ds2" prepare noisy $tiny/data/test.json $data/test_snr$snr --noise $data/noise/test.json --snr $snr --seed $seed
  done
  "$ds2" prepare noisy $tiny/data/test.json $data/test_reverb --rir $data/rirs/test.json --seed $seed
  "$python" -c "import sys; from ds2.data import read_manifest, write_manifest; write_manifest(sys.argv[2], read_manifest(sys.argv[1]))" \
    $tiny/data/test.json $data/test_clean.json # the clean set with absolute paths into the tiny corpus
  if [ ! -d $sphinx_data ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "Stage 3: installing the Debian package pocketsphinx-testdata (real speech, 3 MB)"
    apt-get install -y -qq pocketsphinx-testdata >/dev/null || true
  fi
  if [ -d $sphinx_data ]; then
    "$python" local/real_speech.py $sphinx_data $data/test_real
  else
    log "Stage 3: no $sphinx_data (apt-get install pocketsphinx-testdata): no real-speech row"
  fi
  done_stage 3
fi
[ -f $data/test_real.json ] && sets="$sets real"

augment="--noise $here/$data/noise/train.json --noise-prob $noise_prob --snr 0,20 --noise-clips 3 \
  --rir $here/$data/rirs/train.json --reverb-prob $reverb_prob --augment-from-epoch $augment_from"

if run_stage 4; then
  log "Stage 4: the tiny recipe with augmentation (noise on $noise_prob, reverberation on $reverb_prob, from epoch $augment_from) -> $exp/aug"
  bash $tiny/run.sh --stage 3 --threads $threads --exp "$here/$exp/aug" --augment "$augment"
  done_stage 4
fi

if run_stage 5; then
  log "Stage 5: a corpus of $engines ($data/all) and the tiny recipe on it -> $exp/all"
  bash $tiny/run.sh --threads $threads --data "$here/$data/all" --exp "$here/$exp/all" --engines $engines
  "$python" -c "import sys; from ds2.data import read_manifest, write_manifest; write_manifest(sys.argv[2], read_manifest(sys.argv[1]))" \
    $data/all/test.json $data/test_voices.json # the all-synthesizer test set
  done_stage 5
fi

if run_stage 6; then
  log "Stage 6: the same with augmentation -> $exp/all_aug"
  bash $tiny/run.sh --stage 3 --threads $threads --data "$here/$data/all" --exp "$here/$exp/all_aug" --augment "$augment"
  done_stage 6
fi

all_sets="clean snr5 voices"
[ -f $data/test_real.json ] && all_sets="$all_sets real"
if run_stage 7; then
  log "Stage 7: the models on the test sets, greedy and with the LM"
  missing=""
  for model in clean aug all all_aug; do
    case $model in
      clean) model_dir=$tiny/exp; model_sets="$sets voices" ;;
      aug) model_dir=$exp/aug; model_sets="$sets voices" ;;
      *) model_dir=$exp/$model; model_sets=$all_sets ;;
    esac
    if [ ! -f $model_dir/decoding.json ]; then
      log "Stage 7: $model_dir has no tuned model yet: $model skipped"
      missing="$missing $model"
      continue
    fi
    for set in $model_sets; do
      if [ ! -f $data/test_$set.json ]; then
        log "Stage 7: no $data/test_$set.json yet (stage 5 makes test_voices): $model on $set skipped"
        missing="$missing $model/$set"
        continue
      fi
      out=$exp/decode/$model/$set
      [ -f $out/score_lm.json ] && continue # decoded before this stage was interrupted
      mkdir -p $out
      "$ds2" decode $model_dir/best.pt $data/test_$set.json -o $out/greedy.json --save-logprobs $out/logprobs.pt --no-progress
      "$ds2" score $out/greedy.json --json $out/score_greedy.json > $out/score_greedy.txt
      "$ds2" decode $model_dir/best.pt $data/test_$set.json -o $out/lm.json --lm $model_dir/lm/lm.bin \
        --logprobs $out/logprobs.pt --no-progress # alpha/beta: $model_dir/decoding.json
      "$ds2" score $out/lm.json --json $out/score_lm.json > $out/score_lm.txt # written last (atomically): marks the pair done
      log "$model model, $set: greedy $(grep '^WER' $out/score_greedy.txt | awk '{print $NF}') %, LM $(grep '^WER' $out/score_lm.txt | awk '{print $NF}') %"
    done
  done
  if [ -n "$missing" ]; then
    log "Stage 7: not done, missing:$missing (run their stages, then this one again)"
  else
    done_stage 7
  fi
fi

if run_stage 8; then
  log "Stage 8: tables and plot"
  "$python" local/results.py $exp --sets "$sets voices" -o $exp/results.md --plot $exp/wer_snr.png
  done_stage 8
fi

if [ -f $exp/results.md ]; then
  cat $exp/results.md
fi
log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
