#!/usr/bin/env bash
# Create .venv (once) and install torchdetr with its test/export/serve extras.
# torch and torchvision are pinned to the releases this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.torchdetr-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install --quiet -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  python -c "import torchdetr, torch, torchvision" 
  touch "$stamp"
fi
