"""``detr plot logs RUN_DIR…`` and ``detr plot pr EVAL_FILE…``: training curves and precision/recall as PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, OutputError
from ..output_paths import refuse_inputs
from ..viz.figure_file import save_figure


def add_parser(subparsers) -> None:
    from ..viz.logs import DEFAULT_FIELDS, LOG_NAME

    p = subparsers.add_parser("plot", help="plot training logs or precision/recall curves (PNG)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    logs = kinds.add_parser("logs", help="loss, class_error, mAP … over epochs, several runs overlaid")
    logs.add_argument("runs", nargs="+", metavar="RUN_DIR", help=f"training output folders (holding {LOG_NAME}) or log files")
    logs.add_argument("--fields", nargs="+", default=list(DEFAULT_FIELDS),
                      help="log fields without train_/test_ (loss, class_error, loss_bbox_unscaled, …) or COCO "
                           f"stats (mAP, AP50, AP75, …); default {' '.join(DEFAULT_FIELDS)}")
    logs.add_argument("--ewm_col", type=float, default=0.0,
                      help="exponential smoothing: centre of mass in epochs (0 = none), as the original")
    logs.add_argument("--log_name", default=LOG_NAME, help=f"log file name inside each RUN_DIR (default {LOG_NAME})")
    logs.add_argument("--output", default="logs.png", help="PNG file to write (default logs.png)")
    logs.set_defaults(func=run_logs)

    pr = kinds.add_parser("pr", help="precision/recall curves from saved COCO evaluations (eval/*.pth)")
    pr.add_argument("files", nargs="+", metavar="EVAL_FILE", help="COCOeval results saved by training (eval/latest.pth)")
    pr.add_argument("--iou", type=float, default=0.5, help="IoU threshold of the curves (default 0.5)")
    pr.add_argument("--names", nargs="+", help="legend names, one per file (default: run folder/file name)")
    pr.add_argument("--output", default="pr.png", help="PNG file to write (default pr.png)")
    pr.set_defaults(func=run_pr)


def _check_output(output: str, inputs: list[Path]) -> Path:
    """``--output``: a .png file that is none of the inputs (checked before any work)."""
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--output: {output!r} must be a .png file")
    refuse_inputs(path, inputs, what=f"--output {output}")
    if path.is_dir():
        raise OutputError(f"--output {output} is a folder: give the .png file to write")
    return path



def run_logs(args: argparse.Namespace) -> int:
    from ..viz.logs import find_log, plot_logs

    output = _check_output(args.output, [find_log(run, args.log_name) for run in args.runs])
    path = save_figure(plot_logs(args.runs, args.fields, args.ewm_col, args.log_name), output, what="plot")
    print(f"wrote {path}")
    return 0


def run_pr(args: argparse.Namespace) -> int:
    from ..viz.precision_recall import plot_precision_recall

    output = _check_output(args.output, [Path(file) for file in args.files])
    fig, curves = plot_precision_recall(args.files, args.iou, args.names)
    for file, curve in zip(args.files, curves):
        print(f"{file}: AP{round(args.iou * 100)} {curve.mean_precision:.3f}, recall {curve.mean_recall:.3f}")
    print(f"wrote {save_figure(fig, output, what='plot')}")
    return 0
