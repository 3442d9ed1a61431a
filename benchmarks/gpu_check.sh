#!/usr/bin/env bash
# The GPU check (issue 12), one command on a lent GPU: installs minichord over the image's own torch and
# Triton (no network there), then runs benchmarks/gpu_check.py; its markdown table is the last output.
#   bash benchmarks/gpu_check.sh [--json FILE]    on one H100/H200, <= 8 minutes
#   bash benchmarks/gpu_check.sh --dry-run        on a CPU, tiny shapes (the test suite runs this)
# PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [[ " $* " != *" --dry-run "* ]]; then
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . >&2
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
