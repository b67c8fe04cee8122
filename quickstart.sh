#!/usr/bin/env bash
# Quick start, command 1: set up (once), then train a small DETR from scratch on the built-in
# synthetic shapes for 6 epochs on the CPU (about 7 minutes on 2 cores; each epoch's line says how long
# is left), evaluate it, print the COCO AP table and write the error report of the best model.
# Extra arguments are passed to `detr train` (e.g. --device cuda, or --time_budget 3 to stop earlier).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
. .venv/bin/activate
detr train --config configs/quickstart.yaml --output_dir outputs/quickstart "$@"
echo
echo "Next: detr predict <images> --model outputs/quickstart --output outputs/predictions --threshold 0.3"
echo "      detr plot logs outputs/quickstart        (the error report: outputs/quickstart/report/)"
