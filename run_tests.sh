#!/usr/bin/env bash
# Sets up and runs the test suite (tiny random models, synthetic data: a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
PY=$(bash scripts/python.sh)
"$PY" -m ruff check --quiet .  # unused names and errors (pyproject.toml), before the tests
"$PY" -m ruff format --check --quiet . || { echo "error: not formatted: run ruff format ." >&2; exit 1; }
"$PY" -m pytest -q tests "$@"
# The equality tests (marker "exactness") once more under the oldest x86 kernel family (SSE4: MKL, oneDNN and
# ATen's own kernels), which block and so round differently from any CPU's native one: an equality that holds
# only on the CPU a test was written on fails here, on every machine. Ignored elsewhere (ARM).
if [ $# -eq 0 ]; then
  OLD_KERNELS="MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default"
  echo "exactness tests under $OLD_KERNELS"
  env $OLD_KERNELS "$PY" -m pytest -q -m exactness tests
fi
