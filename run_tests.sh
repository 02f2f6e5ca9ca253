#!/usr/bin/env bash
# Sets up and runs the test suite (tiny random models, synthetic data: a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
exec "$(bash scripts/python.sh)" -m pytest -q tests "$@"
