#!/usr/bin/env bash
# Quick start, command 2: set up (once) and run the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
. .venv/bin/activate
ruff check .
lint-imports --no-cache
python -m pytest -q "$@"
