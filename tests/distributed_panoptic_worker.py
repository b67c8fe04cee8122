"""``detr eval``'s model evaluation, keeping its PQ: run by ``tests/test_distributed_panoptic.py`` under ``torchrun``
(2 processes) and as a plain process (1).

``python -m tests.distributed_panoptic_worker RESULT.json -- EVAL_ARGS…`` parses ``EVAL_ARGS`` with the
``detr eval`` parser, evaluates as ``detr eval --model CKPT`` does (``config_for_model_evaluation`` +
``evaluate_model``) and the main process writes the PQ result (groups, per class, image count) to
``RESULT.json`` (JSON floats round-trip exactly), which the printed tables show only rounded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from torchdetr.cli import build_parser
from torchdetr.cli.evaluate import config_for_model_evaluation
from torchdetr.engine.evaluate import evaluate_model


def main(result_file: Path, eval_argv: list[str]) -> None:
    args = build_parser(only="eval").parse_args(["eval", *eval_argv])
    rank = int(os.environ.get("RANK", "0"))  # torchrun's; evaluate_model leaves the process group at its end
    evaluation = evaluate_model(config_for_model_evaluation(args))
    if rank == 0:
        result_file.write_text(json.dumps(dataclasses.asdict(evaluation.result.panoptic)))


if __name__ == "__main__":
    separator = sys.argv.index("--")
    main(Path(sys.argv[1]), sys.argv[separator + 1:])
