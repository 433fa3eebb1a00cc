#!/usr/bin/env bash
# Run the ds2 test suite (sets up .venv and sclite first; safe to re-run).
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k model     # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest -q "$@"
