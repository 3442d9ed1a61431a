#!/usr/bin/env bash
# The GPU check (issues 12 and 15), one command on a lent GPU: runs benchmarks/gpu_check.py with the image's
# own torch, Triton and transformers, minichord installed over them without dependencies (nothing can be
# fetched there); its markdown table is the last output.
#   bash benchmarks/gpu_check.sh [--json FILE]    on one H100/H200, <= 8 minutes
#   bash benchmarks/gpu_check.sh --dry-run        on a CPU, tiny shapes (the test suite runs this)
# PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [[ " $* " != *" --dry-run "* ]]; then  # kernels/ installs as minichord.kernels (pyproject's package-dir)
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . >&2 || echo "gpu_check: pip install -e . failed" >&2
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
