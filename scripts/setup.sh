#!/usr/bin/env bash
# Create .venv (once) and install torchdetr with its test/export/serve extras.
# torch and torchvision are pinned to the releases this project is tested with.
# A failed install stops here with pip's own error (it used to be swallowed, and the next command then
# failed with "lint-imports: command not found").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
# torch's CUDA build with the extras takes about 7 GB in .venv; pip needs room for its unpacked wheels too
NEEDED_GB=8

pip_install() {
  # pip's output is shown without its "Location" warnings; a failure stops the setup
  local log
  log=$(mktemp)
  if python -m pip install --quiet --no-cache-dir "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" || true
    rm -f "$log"
    return 0
  fi
  grep -v "^WARNING: Location" "$log" >&2 || true
  rm -f "$log"
  echo "setup: 'pip install $*' failed (pip's error above); $(df -h . | awk 'NR==2 {print $4}') free on this disk" >&2
  exit 1
}

stamp=.venv/.torchdetr-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ ! -d .venv/lib ] && [ "$free_kb" -lt $((NEEDED_GB * 1024 * 1024)) ]; then
    echo "setup: warning: $(pwd) has $((free_kb / 1024)) MB free; torch and the test extras take about ${NEEDED_GB} GB" >&2
  fi
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
  fi
  . .venv/bin/activate
  pip_install --upgrade pip
  pip_install "torch==2.14.1" "torchvision==0.29.1"
  pip_install -e ".[test]"
  python -c "import torchdetr, torch, torchvision"
  touch "$stamp"
fi
