#!/usr/bin/env bash
# Set up ds2 in ./.venv: a virtual environment with ds2 (editable) and its dependencies.
# Safe to re-run: it reinstalls only when setup.cfg or this script changed.
#   bash scripts/setup.sh            # runtime dependencies
#   bash scripts/setup.sh --test     # plus pytest, playwright and Debian's sctk (NIST sclite), flite,
#                                    # festival and chromium
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

log() { echo "$(date '+%H:%M:%S') [setup] $*"; }

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($python --version)"
  $python -m venv .venv
fi

stamp=.venv/.ds2-setup
digest=$(cat setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
installed=$(cat "$stamp" 2>/dev/null || true)
# An install with the test extras serves a plain set-up too (recipes and tests alternate).
if { [ "$installed" != "$digest-$want_test" ] && [ "$installed" != "$digest-1" ]; } \
    || ! .venv/bin/python -c "import ds2.cli, ds2.cuda" 2>/dev/null; then
  log "installing ds2 and its dependencies (torch 2.11 + torchaudio 2.11: a few GB the first time)"
  .venv/bin/python -m pip install -q --upgrade pip wheel
  extras=""
  [ $want_test = 1 ] && extras="[test]"
  .venv/bin/python -m pip install -q -e ".$extras"
  echo "$digest-$want_test" > "$stamp"
else
  log ".venv is up to date"
fi

# KenLM's lmplz/build_binary for `ds2 lm build` and its query libraries for ds2's beam search
# decoder (the pip package has only the Python query module). Does nothing when all are there.
bash lm/build_kenlm.sh

# For the tests: sclite, the reference scorer the WER/CER tests compare against; Flite and
# Festival with two voices, the synthesizers beside eSpeak (tests/test_voices.py).
debian_packages=""
if [ $want_test = 1 ]; then
  [ -x /usr/lib/sctk/bin/sclite ] || debian_packages="$debian_packages sctk"
  command -v flite >/dev/null || debian_packages="$debian_packages flite"
  [ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] && [ -d /usr/share/festival/voices/english/kal_diphone ] \
    || debian_packages="$debian_packages festival festvox-us-slt-hts festvox-kallpc16k"
  # the browser test of `ds2 serve`'s page (playwright drives Debian's chromium)
  command -v chromium >/dev/null || debian_packages="$debian_packages chromium"
fi
if [ -n "$debian_packages" ]; then
  sudo=""
  [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && sudo="sudo"
  if command -v apt-get >/dev/null; then
    log "installing Debian packages:$debian_packages"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq $debian_packages >/dev/null
  else
    log "warning: no apt-get; install$debian_packages by hand (their tests fail without them)"
  fi
fi
