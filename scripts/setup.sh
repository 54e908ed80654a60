#!/usr/bin/env bash
# Set up relayrl in ./.venv: a CPU build of PyTorch first (GPU users: install your own torch>=2.2
# into the venv before running this), then relayrl with its test and plot extras (pytest;
# matplotlib for relayrl plot and the learning_curve.png of every run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,plot]"
.venv/bin/python -c "import relayrl, torch; print(f'relayrl {relayrl.__version__} ready (torch {torch.__version__})')"
