# Shared by the recipes (sourced, not run): logging, stage markers, set-up.
#
# Before sourcing, a recipe sets `stage`, `stop_stage` and `exp`, and may define
# `done_marker N` (default: $exp/.stageN.done). After sourcing it has `repo`, `ds2`,
# `python`, `start_time`, `log`, `run_stage N` (true when stage N is in range and not done),
# `done_stage N`, `ds2_train N [ds2 train arguments]` (one process, or torchrun) and
# `decode_and_score TAG MANIFEST EXP [ds2 decode options]`.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

recipe=$(basename "$PWD")/$(basename "$0") # recipes cd into their folder before sourcing this
log() { # the line is the recipe's own, also when called from a function here
  local i=0
  while [ $i -lt 4 ] && [ "${BASH_SOURCE[i + 1]:-$0}" != "$0" ]; do i=$((i + 1)); done
  echo "$(date '+%Y-%m-%d %H:%M:%S') ($recipe:${BASH_LINENO[i]}) $*"
}

if ! declare -F done_marker >/dev/null; then
  done_marker() { echo "$exp/.stage$1.done"; }
fi

run_stage() { # run_stage N: true if stage N is in range and not yet done
  local n=$1
  [ "$stage" -le "$n" ] && [ "$stop_stage" -ge "$n" ] || return 1
  if [ -f "$(done_marker "$n")" ]; then
    log "Stage $n: already done ($(done_marker "$n")), skipping"
    return 1
  fi
  return 0
}
done_stage() { touch "$(done_marker "$1")"; }

# ds2_train N ARGS...: `ds2 train ARGS`, or the same under torchrun with N ranks on this machine
# when N > 1 or $torchrun_opts is set (default --standalone: one machine); for several machines
# e.g. "--nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint HOST:29500".
ds2_train() {
  local n=$1; shift
  if [ "$n" -gt 1 ] || [ -n "${torchrun_opts:-}" ]; then
    "$python" -m torch.distributed.run ${torchrun_opts:---standalone} --nproc-per-node "$n" -m ds2.cli train "$@"
  else
    "$ds2" train "$@"
  fi
}

# decode_and_score TAG MANIFEST EXP [ds2 decode options]: EXP/best.pt's hypotheses of MANIFEST in
# EXP/decode_TAG.json, their WER/CER in EXP/score_TAG.txt and .json
decode_and_score() {
  local tag=$1 manifest=$2 exp=$3; shift 3
  "$ds2" decode "$exp/best.pt" "$manifest" -o "$exp/decode_$tag.json" --no-progress "$@"
  "$ds2" score "$exp/decode_$tag.json" --json "$exp/score_$tag.json" > "$exp/score_$tag.txt"
}

bash "$repo/scripts/setup.sh"
ds2="$repo/.venv/bin/ds2"
python="$repo/.venv/bin/python"
start_time=$(date +%s) # the elapsed time printed at the end excludes set-up
