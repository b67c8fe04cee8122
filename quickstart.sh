#!/usr/bin/env bash
# Quick start, command 1: set up (once), then train a small DETR from scratch on the built-in
# synthetic shapes for a few minutes on the CPU, evaluate it and print the COCO AP table.
# Extra arguments are passed to `detr train` (e.g. --time_budget 3, --device cuda).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
. .venv/bin/activate
detr train --config configs/quickstart.yaml --output_dir outputs/quickstart "$@"
echo
echo "Next: detr predict <images> --model outputs/quickstart/checkpoint.pth --output outputs/predictions --threshold 0.3"
echo "      detr plot logs outputs/quickstart"
