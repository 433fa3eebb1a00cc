# Shared by the recipes (sourced, not run): logging, stage markers, set-up.
#
# Before sourcing, a recipe sets `stage`, `stop_stage` and `exp`, and may define
# `done_marker N` (default: $exp/.stageN.done). After sourcing it has `repo`, `ds2`,
# `python`, `start_time`, `log`, `run_stage N` (true when stage N is in range and not done)
# and `done_stage N`.

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

bash "$repo/scripts/setup.sh"
ds2="$repo/.venv/bin/ds2"
python="$repo/.venv/bin/python"
start_time=$(date +%s) # the elapsed time printed at the end excludes set-up
