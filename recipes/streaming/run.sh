#!/usr/bin/env bash
# The streaming recipe: DS2's deployment model (section 7) on the tiny corpus. A forward-only
# model (unidirectional GRUs, a row convolution looking --lookahead steps ahead, online
# feature normalization) beside the tiny recipe's bidirectional one; streamed through the
# same code as `ds2 serve`; the server's latency under load.
#
#   bash recipes/streaming/run.sh                   # all stages
#   bash recipes/streaming/run.sh --stage 4         # only the latency benchmark and the table again
#
# Stages (a marker file per finished stage; delete recipes/streaming/exp to redo):
#   1  the tiny recipe's corpus, bidirectional model and LM (runs recipes/tiny/run.sh when missing)
#   2  the tiny recipe's training, decoding, LM tuning with the forward-only model -> exp/stream
#      (ds2 train --no-bidirectional --normalize online --lookahead $lookahead)
#   3  the test set streamed file by file (ds2 transcribe --stream --no-realtime: 100 ms chunks
#      through ds2 serve's engine, endpointing on), scored, and checked against the offline
#      decode of the same model
#   4  benchmarks/serve_latency.py: 1, 10 and 50 streams at real-time pace against `ds2 serve`
#      on one core, with and without Batch Dispatch and int8 (exp/latency.txt)
#   5  the table: exp/results.md
set -euo pipefail

stage=1
stop_stage=100
lookahead=3 # row convolution steps (30 ms each at the tiny model's time stride 3)
threads=0 # torch CPU threads of the training (0: all cores)
latency_seconds=20 # load per row of the latency benchmark

usage="Usage: $0 [--stage N] [--stop-stage N] [--lookahead $lookahead] [--threads $threads] [--latency-seconds $latency_seconds]"
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --lookahead) lookahead=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --latency-seconds) latency_seconds=$2; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "unknown option $1"; echo "$usage"; exit 1 ;;
  esac
done

cd "$(dirname "$0")"
here=$PWD
exp=exp
tiny=../tiny
mkdir -p $exp
source ../common.sh

if run_stage 1; then
  if [ ! -f $tiny/exp/.stage8.done ]; then
    log "Stage 1: the tiny recipe's model is missing: running recipes/tiny/run.sh"
    bash $tiny/run.sh --threads $threads
  fi
  log "Stage 1: bidirectional model $tiny/exp/best.pt"
  done_stage 1
fi

if run_stage 2; then
  log "Stage 2: the forward-only model (row convolution tau=$lookahead, online normalization) -> $exp/stream"
  bash $tiny/run.sh --stage 3 --threads $threads --exp "$here/$exp/stream" \
    --train-opts "--no-bidirectional --normalize online --lookahead $lookahead"
  done_stage 2
fi

if run_stage 3; then
  log "Stage 3: the test set streamed in 100 ms chunks (ds2 transcribe --stream --no-realtime)"
  "$python" -c "import sys, json; from ds2.data import read_manifest; [print(r['audio_filepath']) for r in read_manifest(sys.argv[1])]" \
    $tiny/data/test.json > $exp/test_files.txt
  mapfile -t files < $exp/test_files.txt
  "$ds2" transcribe $exp/stream/best.pt "${files[@]}" --stream --no-realtime --format json -o $exp/stream_test.jsonl
  "$python" local/stream_score.py $tiny/data/test.json $exp/stream_test.jsonl $exp/stream/decode_test.json \
    --json $exp/stream_score.json
  done_stage 3
fi

if run_stage 4; then
  log "Stage 4: latency under load (benchmarks/serve_latency.py; $latency_seconds s per row)"
  "$python" $repo/benchmarks/serve_latency.py --model $exp/stream/best.pt --manifest $tiny/data/test.json \
    --seconds $latency_seconds --int8 --capacity 10,20,30,40,60,80,100 --csv $exp/latency.csv | tee $exp/latency.txt
  done_stage 4
fi

if run_stage 5; then
  log "Stage 5: the table"
  "$python" local/results.py $tiny/exp $exp -o $exp/results.md
  done_stage 5
fi

[ -f $exp/results.md ] && cat $exp/results.md
log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
