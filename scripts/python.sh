#!/usr/bin/env bash
# Prints the Python the project runs with: $PYTHON if set, the active virtual environment's if one is active,
# else the project's own .venv (setup.sh creates it). Used by setup.sh and every run script.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  echo "$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ]; then
  echo "$VIRTUAL_ENV/bin/python"
else
  echo "$PWD/.venv/bin/python"
fi
