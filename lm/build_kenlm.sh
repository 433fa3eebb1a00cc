#!/usr/bin/env bash
# Build KenLM's lmplz and build_binary from the source distribution of the kenlm release the
# Python package uses (the PyPI package compiles only the query module) and install them
# into the project's environment (.venv/bin), with KenLM's query libraries and headers
# (.venv/lib/kenlm, .venv/include/kenlm) that ds2's beam search decoder (ds2/decode/csrc)
# compiles against. Safe to re-run: does nothing when all are there.
#   bash lm/build_kenlm.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KENLM_VERSION=0.3.0
venv_bin=.venv/bin
lib_dir=.venv/lib/kenlm
include_dir=.venv/include/kenlm
log() { echo "$(date '+%H:%M:%S') [kenlm] $*"; }

usage=$($venv_bin/lmplz --help 2>&1 || true) # lmplz prints its usage and exits 1
if [ -x $venv_bin/build_binary ] && [[ "$usage" == *"--order"* ]] && [ -f $lib_dir/libkenlm.a ] \
  && [ -f $lib_dir/libkenlm_util.a ] && [ -f $include_dir/lm/model.hh ]; then
  log "lmplz, build_binary and the query libraries already in .venv"
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
make -C "$work/build" -j"$(nproc)" lmplz build_binary kenlm kenlm_util >"$work/make.log" 2>&1 \
  || { tail -20 "$work/make.log" >&2; exit 1; }
install -m 755 "$work/build/bin/lmplz" "$work/build/bin/build_binary" $venv_bin/
# The query libraries (position-independent: they link into a Python extension) and the
# headers, replaced whole so that a rebuild never mixes versions.
rm -rf $lib_dir $include_dir
install -d $lib_dir $include_dir
install -m 644 "$work/build/lib/libkenlm.a" "$work/build/lib/libkenlm_util.a" $lib_dir/
(cd "$work/kenlm-$KENLM_VERSION" && find lm util -name '*.hh' -o -name '*.h' | grep -v '_test' \
  | while read -r header; do install -D -m 644 "$header" "$OLDPWD/$include_dir/$header"; done)
log "installed $venv_bin/lmplz, $venv_bin/build_binary, $lib_dir and $include_dir"
