"""``detr train``: the original ``main.py`` command line (same flag names and defaults) plus torchdetr's options."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..config import DETRConfig, add_config_arguments, config_from_args, read_config_file

log = logging.getLogger("torchdetr.train")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train (or evaluate with --eval) a DETR model",
        description="Train DETR. Accepts the original main.py flags (--coco_path, --batch_size, --epochs, --lr_drop, "
        "--resume, --eval, ...) and a --config YAML/JSON file of the same names. --num_classes defaults to the "
        "annotation file's max category id + 1.",
    )
    p.add_argument("--config", help="YAML/JSON file of options (flags given on the command line win)")
    add_config_arguments(p)
    p.set_defaults(func=run)


def config_for_training(args: argparse.Namespace) -> DETRConfig:
    """The run's config; ``num_classes`` is ``None`` (inferred from the data) unless the user gave it."""
    cfg = config_from_args(args)
    given = args.num_classes is not None or (args.config and "num_classes" in read_config_file(args.config))
    if not given:
        cfg = cfg.replace(num_classes=None)
    return cfg


def finish_run(result) -> list[Path]:
    """The end of a training run: the error report of the best model and the training curves in
    ``OUTPUT_DIR/report`` (with ``--report``, the default); returns the files for the experiment trackers."""
    from ..engine.best import BEST_CHECKPOINT_NAME
    from ..engine.checkpoint import CHECKPOINT_NAME
    from ..engine.run_dir import REPORT_DIR
    from ..evaluation.report import format_report_table
    from ..viz.figure_file import save_figure
    from ..viz.logs import plot_logs
    from ..viz.report import REPORT_DPI, write_evaluation_report

    cfg = result.config
    if not cfg.report or result.output_dir is None or cfg.eval:
        return []
    folder = result.output_dir / REPORT_DIR
    files: list[Path] = []
    if result.best_eval is not None and result.best_eval.evaluator is not None:
        best = result.best or {}
        model = ({"model": BEST_CHECKPOINT_NAME, "epoch": best["epoch"], best["metric"]: best["value"]} if best
                 else {"model": CHECKPOINT_NAME})
        report, files = write_evaluation_report(result.best_eval, folder, result.val_dataset, extra=model)
        print(f"\nerror report of {model['model']}" + (f" (epoch {best['epoch']})" if best else "") + ":")
        print(format_report_table(report))
    fig = plot_logs([result.output_dir])
    files.append(save_figure(fig, folder / "training_curves.png", dpi=REPORT_DPI, what="report picture"))
    print(f"report written to {folder}")
    return [folder] if files else []


def run(args: argparse.Namespace) -> int:
    return run_training(config_for_training(args))


def run_training(cfg: DETRConfig) -> int:
    """What ``detr train`` does with its config (also each task of ``detr submit``); returns the exit code."""
    from ..engine.distributed import PeerLost
    from ..engine.loop import TrainingDiverged
    from ..engine.run import train
    from ..engine.stop import STOPPED_EXIT_CODE

    try:
        result = train(cfg, artifacts=finish_run)
    except (TrainingDiverged, PeerLost) as err:  # not user errors, but their messages say all there is to say
        print(f"detr train: {err}", file=sys.stderr)
        return 1
    if result.stopped_by is not None:
        print(f"detr train: stopped by {result.stopped_by}; continue with the same command and --resume auto",
              file=sys.stderr)
        return STOPPED_EXIT_CODE
    if result.output_dir is not None and not cfg.eval and os.environ.get("RANK", "0") == "0":
        print(f"checkpoint and logs written to {result.output_dir}")
    return 0
