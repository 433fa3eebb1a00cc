#!/usr/bin/env bash
# Deep Speech 2 on Mozilla Common Voice, any language, for a user with a release on disk: one
# language folder of https://commonvoice.mozilla.org/datasets unpacked (clips/*.mp3, train.tsv,
# dev.tsv, test.tsv, validated.tsv, ...). The official splits are used as given (no speaker is in
# two of them); the alphabet is that of the training sentences.
#
#   bash recipes/commonvoice/run.sh --corpus /data/cv-corpus-17.0-2024-03-15/de   # all stages
#   bash recipes/commonvoice/run.sh --corpus /data/cv/fr --nproc-per-node 4       # 4 GPUs (torchrun)
#   bash recipes/commonvoice/run.sh --corpus /data/cv/fr --lm-text more_french.txt
#                                      # more LM text (dev and test sentences are taken out of it)
#   bash recipes/commonvoice/run.sh --stage 4                                     # decode and score again
#
# Stages (a marker file per finished stage, so a rerun skips what is done: stages 1-2 in
# --data, the others in --exp; a stopped training resumes from exp/last.pt):
#   1  manifests (ds2 prepare commonvoice): texts lower-cased, punctuation removed, letters of
#      any script kept; each mp3 decoded once and written as 16 kHz FLAC to data/clips (training
#      would otherwise decode mp3 every epoch: ~4x the cost of FLAC); rows with a missing clip,
#      an empty sentence or unreadable audio in data/<split>.rejects.json with the reason;
#      data/alphabet.json from the training sentences
#   2  4-gram KenLM from the training sentences (+ --lm-text), in the alphabet; no dev or test
#      sentence in it
#   3  train DS2 (2 conv layers 41x11, 21x11 with 32 channels, strides 2x2, 2x1; 3 bidirectional
#      BatchNorm-GRU layers of 512: the size a few hundred hours support), best checkpoint on dev;
#      under torchrun with --nproc-per-node N > 1
#      With noise augmentation (DS2 5.2; --augment false: none): noise on 40 % of the utterances
#      at 0-20 dB from the second epoch on, reverberation on 20 %; the noise (data/noise:
#      generated, + --noise-from MUSAN or folders) and rooms (data/rirs: simulated) made once
#   4  greedy-decode dev and test (saving the acoustic model's log-probs), score
#   5  tune the LM weight alpha and the word bonus beta on dev
#   6  LM beam search on dev and test, score; the results table (exp/results.md)
set -euo pipefail

stage=1
stop_stage=100
corpus=""  # the language folder: clips/, train.tsv, dev.tsv, test.tsv
min_char_count=1  # a character enters the alphabet when the training sentences have it this often
audio_format=flac  # flac or wav (converted once), none (train on the mp3 clips)
lm_text=""  # more LM text (plain or .gz), added to the training sentences
lm_order=4
lm_memory=2G  # lmplz -S
nproc_per_node=1  # training processes (one per GPU); more than 1: torchrun
torchrun_opts=""  # more torchrun options, e.g. for several machines (see recipes/common.sh)
device=auto
epochs=30
batch_size=64  # utterances per minibatch, all ranks together
threads=0  # torch CPU threads per process (0: default)
seed=0
jobs=$(nproc)  # processes reading and converting audio (stage 1) and running beam search (stages 5-6)
beam_width=100
source "$(dirname "$0")/../augment_defaults.sh" # --augment, --noise-from, --noise-prob, ...
train_opts=""  # more ds2 train options, after the recipe's (so they win)
decode_opts=""  # more ds2 decode options (greedy and LM), e.g. "--batch-size 16"
data=data  # relative to recipes/commonvoice, or absolute
exp=exp

usage="Usage: $0 --corpus DIR [--stage N] [--stop-stage N] [--min-char-count $min_char_count]
  [--audio-format $audio_format] [--lm-text FILE] [--lm-order $lm_order] [--lm-memory $lm_memory]
  [--nproc-per-node $nproc_per_node] [--torchrun-opts \"OPTIONS\"] [--device $device] [--epochs $epochs]
  [--batch-size $batch_size] [--threads $threads] [--seed $seed] [--jobs $jobs] [--beam-width $beam_width]
  $augment_usage [--train-opts \"DS2 TRAIN OPTIONS\"] [--decode-opts \"DS2 DECODE OPTIONS\"] [--data $data] [--exp $exp]"
source "$(dirname "$0")/../parse_options.sh" # --some-name VALUE sets $some_name
# paths given relative to where the recipe was called from stay valid after the cd below
[ -z "$corpus" ] || corpus=$(realpath "$corpus")
[ -z "$lm_text" ] || lm_text=$(realpath "$lm_text")

cd "$(dirname "$0")"
mkdir -p "$data" "$exp"
done_marker() { if [ "$1" -le 2 ]; then echo "$data/.stage$1.done"; else echo "$exp/.stage$1.done"; fi; }
source ../common.sh

if run_stage 1; then
  [ -n "$corpus" ] || { echo "$0: stage 1 needs --corpus DIR (a Common Voice language folder)"; echo "$usage"; exit 1; }
  log "Stage 1: manifests of $corpus (train, dev, test; clips as 16 kHz $audio_format; rejects beside each)"
  "$ds2" prepare commonvoice "$corpus" "$data" --min-char-count "$min_char_count" --audio-format "$audio_format" \
    --jobs "$jobs"
  done_stage 1
fi

if run_stage 2; then
  log "Stage 2: $lm_order-gram LM from the training sentences${lm_text:+ and $lm_text}"
  extra=()
  [ -z "$lm_text" ] || extra=(--text "$lm_text")
  "$python" ../local/lm_text.py "$data/train.json" "${extra[@]}" -o "$data/lm_text.txt" \
    --exclude "$data/dev.json" "$data/test.json"
  "$ds2" lm build "$data/lm_text.txt" -o "$data/lm" --order "$lm_order" --memory "$lm_memory" \
    --alphabet "$data/alphabet.json"
  done_stage 2
fi

if run_stage 3; then
  log "Stage 3: train DS2 on $data/train.json, $nproc_per_node process(es) (log: $exp/train.log; curves: $exp/curves.png)"
  augmentation=""
  if [ "$augment" = true ]; then
    augmentation=$(augment_options "$data")
    log "  augmentation: $augmentation"
  fi
  ds2_train "$nproc_per_node" "$data/train.json" "$data/dev.json" --out-dir "$exp" --alphabet "$data/alphabet.json" \
    --epochs "$epochs" --batch-size "$batch_size" --optimizer sgd --momentum 0.99 --anneal 1.2 --grad-clip 400 \
    --conv-layers 2 --conv-channels 32,32 --conv-kernels 41x11,21x11 --conv-strides 2x2,2x1 \
    --rnn-type gru --rnn-layers 3 --rnn-hidden 512 --bidirectional --batch-norm --fc-hidden 512 \
    --device "$device" --threads "$threads" --seed "$seed" --num-workers 4 --checkpoint-every 1000 --no-progress \
    $augmentation $train_opts $([ -f "$exp/last.pt" ] && echo --resume)
  done_stage 3
fi

if run_stage 4; then
  log "Stage 4: greedy-decode dev and test with $exp/best.pt, score"
  for name in dev test; do
    decode_and_score "$name" "$data/$name.json" "$exp" --save-logprobs "$exp/logprobs_$name.pt" --device "$device" \
      $decode_opts
  done
  done_stage 4
fi

if run_stage 5; then
  log "Stage 5: tune alpha/beta on dev (tune.png, tune.csv, decoding.json in $exp)"
  "$ds2" tune "$exp/logprobs_dev.pt" "$data/dev.json" --lm "$data/lm/lm.bin" -o "$exp" \
    --beam-width "$beam_width" --jobs "$jobs"
  done_stage 5
fi

if run_stage 6; then
  log "Stage 6: LM beam search on dev and test (alpha/beta from $exp/decoding.json), score"
  for name in dev test; do
    decode_and_score "lm_$name" "$data/$name.json" "$exp" --lm "$data/lm/lm.bin" --logprobs "$exp/logprobs_$name.pt" \
      --beam-width "$beam_width" --jobs "$jobs" $decode_opts
  done
  done_stage 6
fi

if [ -f "$exp/score_dev.json" ]; then
  log "Results (WER/CER details in $exp/score_*.txt):"
  "$python" ../local/results_table.py "$exp" dev test -o "$exp/results.md"
fi

log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
