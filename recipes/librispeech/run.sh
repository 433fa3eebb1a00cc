#!/usr/bin/env bash
# Deep Speech 2 on LibriSpeech (960 h of read English), for a user with the corpus on disk: the
# train/dev/test archives of https://www.openslr.org/12 unpacked into one LibriSpeech/ folder,
# and for the LM the normalized text librispeech-lm-norm.txt.gz of https://www.openslr.org/11.
#
#   bash recipes/librispeech/run.sh --corpus /data/LibriSpeech --lm-text /data/librispeech-lm-norm.txt.gz \
#     --nproc-per-node 8                         # all stages, 8 GPUs of this machine (torchrun)
#   bash recipes/librispeech/run.sh --corpus /data/LibriSpeech --train-sets train-clean-100
#                                                # the 100-hour subset only, one process
#   bash recipes/librispeech/run.sh --stage 4    # decode and score again
#   bash recipes/librispeech/run.sh ... --train-opts "--rnn-layers 7 --lr 1e-3"
#                                                # any ds2 train option (the last given wins)
#
# Stages (a marker file per finished stage, so a rerun skips what is done: stages 1-2 in
# --data, the others in --exp; a stopped training resumes from exp/last.pt):
#   1  manifests of the subsets present (ds2 prepare librispeech: every file read and checked,
#      bad entries in data/<subset>.rejects.json with the reason); data/train.json holds the
#      training subsets together
#   2  n-gram KenLM (4-gram, singleton n-grams pruned) from --lm-text, else from the training
#      transcripts; dev and test sentences are never in it
#   3  train DS2 (conv 41x11, 21x11, 21x11 with 32, 32, 96 channels and strides 2x2, 2x1, 2x1;
#      5 bidirectional BatchNorm-GRU layers of 1024; 71M parameters; SortaGrad, Nesterov SGD),
#      the best checkpoint on dev-clean; under torchrun with --nproc-per-node N > 1
#      With noise augmentation (DS2 5.2; --augment false: none): noise on 40 % of the utterances
#      at 0-20 dB from the second epoch on, reverberation on 20 %; the noise (data/noise:
#      generated, + --noise-from MUSAN or folders) and rooms (data/rirs: simulated) made once
#   4  greedy-decode the evaluation sets (saving the acoustic model's log-probs), score
#   5  tune the LM weight alpha and the word bonus beta on dev-clean
#   6  LM beam search on the evaluation sets, score; the results table (exp/results.md)
set -euo pipefail

stage=1
stop_stage=100
corpus=""  # the LibriSpeech/ folder: train-clean-100/, dev-clean/, ...
train_sets=train-clean-100,train-clean-360,train-other-500  # those present are used
eval_sets=dev-clean,dev-other,test-clean,test-other  # those present are decoded
dev_set=dev-clean  # picks the best checkpoint, tunes alpha/beta
lm_text=""  # e.g. librispeech-lm-norm.txt.gz (plain or .gz); empty: the training transcripts
lm_order=4
lm_prune=singletons  # lmplz --prune thresholds ("0 1 1 1"), singletons: 0 then 1 per higher order, none
lm_memory=4G  # lmplz -S
nproc_per_node=1  # training processes (one per GPU); more than 1: torchrun
torchrun_opts=""  # more torchrun options, e.g. for several machines (see recipes/common.sh)
device=auto
epochs=20
batch_size=128  # utterances per minibatch, all ranks together
threads=0  # torch CPU threads per process (0: default)
seed=0
jobs=$(nproc)  # processes reading audio (stage 1) and running beam search (stages 5-6)
beam_width=100
source "$(dirname "$0")/../augment_defaults.sh" # --augment, --noise-from, --noise-prob, ...
train_opts=""  # more ds2 train options, after the recipe's (so they win)
decode_opts=""  # more ds2 decode options (greedy and LM), e.g. "--batch-size 16"
data=data  # relative to recipes/librispeech, or absolute
exp=exp

usage="Usage: $0 --corpus DIR [--stage N] [--stop-stage N] [--train-sets $train_sets]
  [--eval-sets $eval_sets] [--dev-set $dev_set] [--lm-text FILE] [--lm-order $lm_order] [--lm-prune \"$lm_prune\"] [--lm-memory $lm_memory]
  [--nproc-per-node $nproc_per_node] [--torchrun-opts \"OPTIONS\"] [--device $device] [--epochs $epochs]
  [--batch-size $batch_size] [--threads $threads] [--seed $seed] [--jobs $jobs] [--beam-width $beam_width]
  $augment_usage [--train-opts \"DS2 TRAIN OPTIONS\"] [--decode-opts \"DS2 DECODE OPTIONS\"] [--data $data] [--exp $exp]"
source "$(dirname "$0")/../parse_options.sh" # --some-name VALUE sets $some_name
case ",$eval_sets," in
  *",$dev_set,"*) ;;
  *) echo "--dev-set $dev_set must be one of --eval-sets $eval_sets"; exit 1 ;;
esac
# paths given relative to where the recipe was called from stay valid after the cd below
[ -z "$corpus" ] || corpus=$(realpath "$corpus")
[ -z "$lm_text" ] || lm_text=$(realpath "$lm_text")

cd "$(dirname "$0")"
mkdir -p "$data" "$exp"
done_marker() { if [ "$1" -le 2 ]; then echo "$data/.stage$1.done"; else echo "$exp/.stage$1.done"; fi; }
source ../common.sh

present_eval_sets() { # the evaluation sets that have a manifest, in the order given
  local name
  for name in ${eval_sets//,/ }; do [ -f "$data/$name.json" ] && echo "$name"; done
  return 0
}

if run_stage 1; then
  [ -n "$corpus" ] || { echo "$0: stage 1 needs --corpus DIR (the LibriSpeech folder)"; echo "$usage"; exit 1; }
  log "Stage 1: manifests of the LibriSpeech subsets in $corpus (rejects beside each)"
  train_manifests=()
  for name in ${train_sets//,/ }; do [ ! -d "$corpus/$name" ] || train_manifests+=("$data/$name.json"); done
  [ ${#train_manifests[@]} -gt 0 ] || { echo "$0: none of the training sets $train_sets is in $corpus"; exit 1; }
  [ -d "$corpus/$dev_set" ] || { echo "$0: the dev set $dev_set is not in $corpus"; exit 1; }
  for name in ${train_sets//,/ } ${eval_sets//,/ }; do
    if [ ! -d "$corpus/$name" ]; then
      log "  $name: not in $corpus, skipped"
      continue
    fi
    "$ds2" prepare librispeech "$corpus/$name" "$data/$name.json" --jobs "$jobs"
  done
  # one folder holds them all, so audio paths relative to it stay valid
  cat "${train_manifests[@]}" > "$data/train.json.tmp"
  mv "$data/train.json.tmp" "$data/train.json"
  log "  training set: ${train_manifests[*]} -> $data/train.json ($(wc -l < "$data/train.json") utterances)"
  done_stage 1
fi

if run_stage 2; then
  if [ -n "$lm_text" ]; then
    log "Stage 2: $lm_order-gram LM from $lm_text"
    text=$lm_text
  else
    log "Stage 2: $lm_order-gram LM from the training transcripts (no --lm-text given)"
    text=$data/lm_text.txt
    held_out=()
    for name in $(present_eval_sets); do held_out+=("$data/$name.json"); done
    "$python" ../local/lm_text.py "$data/train.json" -o "$text" --exclude "${held_out[@]}"
  fi
  case "$lm_prune" in
    none) prune=() ;;
    singletons) prune=(--prune "0$(for _ in $(seq 2 "$lm_order"); do printf ' 1'; done)") ;;
    *) prune=(--prune "$lm_prune") ;;
  esac
  "$ds2" lm build "$text" -o "$data/lm" --order "$lm_order" --memory "$lm_memory" "${prune[@]}"
  done_stage 2
fi

if run_stage 3; then
  log "Stage 3: train DS2 on $data/train.json, $nproc_per_node process(es) (log: $exp/train.log; curves: $exp/curves.png)"
  augmentation=""
  if [ "$augment" = true ]; then
    augmentation=$(augment_options "$data")
    log "  augmentation: $augmentation"
  fi
  # --lr and --grad-clip are ds2's defaults for Nesterov SGD: they are for the mean loss per
  # utterance of a minibatch of --batch-size utterances, the same update on one process or N.
  ds2_train "$nproc_per_node" "$data/train.json" "$data/$dev_set.json" --out-dir "$exp" \
    --epochs "$epochs" --batch-size "$batch_size" --optimizer sgd --momentum 0.99 --anneal 1.2 --grad-clip 400 \
    --conv-layers 3 --conv-channels 32,32,96 --conv-kernels 41x11,21x11,21x11 --conv-strides 2x2,2x1,2x1 \
    --rnn-type gru --rnn-layers 5 --rnn-hidden 1024 --bidirectional --batch-norm --fc-hidden 1024 \
    --device "$device" --threads "$threads" --seed "$seed" --num-workers 4 --checkpoint-every 1000 --no-progress \
    $augmentation $train_opts $([ -f "$exp/last.pt" ] && echo --resume)
  done_stage 3
fi

if run_stage 4; then
  log "Stage 4: greedy-decode $(present_eval_sets | xargs) with $exp/best.pt, score"
  for name in $(present_eval_sets); do
    decode_and_score "$name" "$data/$name.json" "$exp" --save-logprobs "$exp/logprobs_$name.pt" --device "$device" \
      $decode_opts
  done
  done_stage 4
fi

if run_stage 5; then
  log "Stage 5: tune alpha/beta on $dev_set (tune.png, tune.csv, decoding.json in $exp)"
  "$ds2" tune "$exp/logprobs_$dev_set.pt" "$data/$dev_set.json" --lm "$data/lm/lm.bin" -o "$exp" \
    --beam-width "$beam_width" --jobs "$jobs"
  done_stage 5
fi

if run_stage 6; then
  log "Stage 6: LM beam search on $(present_eval_sets | xargs) (alpha/beta from $exp/decoding.json), score"
  for name in $(present_eval_sets); do
    decode_and_score "lm_$name" "$data/$name.json" "$exp" --lm "$data/lm/lm.bin" --logprobs "$exp/logprobs_$name.pt" \
      --beam-width "$beam_width" --jobs "$jobs" $decode_opts
  done
  done_stage 6
fi

if [ -f "$exp/score_$dev_set.json" ]; then
  log "Results (WER/CER details in $exp/score_*.txt):"
  "$python" ../local/results_table.py "$exp" $(present_eval_sets) -o "$exp/results.md"
fi

log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
