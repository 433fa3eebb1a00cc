#!/usr/bin/env bash
# Build KenLM's lmplz and build_binary from the source distribution of the kenlm release the
# Python package uses (the PyPI package compiles only the query module) and install them
# into the project's environment (.venv/bin). Safe to re-run: does nothing when both work.
#   bash lm/build_kenlm.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KENLM_VERSION=0.3.0
venv_bin=.venv/bin
log() { echo "$(date '+%H:%M:%S') [kenlm] $*"; }

usage=$($venv_bin/lmplz --help 2>&1 || true) # lmplz prints its usage and exits 1
if [ -x $venv_bin/build_binary ] && [[ "$usage" == *"--order"* ]]; then
  log "lmplz and build_binary already in $venv_bin"
  exit 0
fi
[ -x $venv_bin/python ] || { echo "error: no $venv_bin/python; run bash scripts/setup.sh first" >&2; exit 1; }

# Boost, compression libraries and cmake (Debian package names).
packages="cmake g++ libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev"
missing=$(for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" != 0 ] && sudo="sudo"
  log "installing build dependencies: $(echo $missing)"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq $missing >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "downloading the kenlm $KENLM_VERSION source distribution"
$venv_bin/python -m pip download -q --no-deps --no-binary=kenlm "kenlm==$KENLM_VERSION" -d "$work"
tar xzf "$work"/kenlm-$KENLM_VERSION.tar.gz -C "$work"
log "building lmplz and build_binary (about 30 s on 2 cores)"
cmake -S "$work/kenlm-$KENLM_VERSION" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 >"$work/cmake.log" 2>&1 \
  || { tail -20 "$work/cmake.log" >&2; exit 1; }
make -C "$work/build" -j"$(nproc)" lmplz build_binary >"$work/make.log" 2>&1 || { tail -20 "$work/make.log" >&2; exit 1; }
install -m 755 "$work/build/bin/lmplz" "$work/build/bin/build_binary" $venv_bin/
log "installed $venv_bin/lmplz and $venv_bin/build_binary"
