"""``detr eval``: COCO AP (and PQ) of a model on a dataset, or of a detections / panoptic predictions file
against its ground truth."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import DETRConfig, add_config_arguments, config_from_args, given_options
from ..errors import ConfigError, OutputError
from ..evaluation.report import DEFAULT_CONF, DEFAULT_IOU, DEFAULT_WORST_IMAGES
from ..inference.precision import FAITHFUL, PRECISION_HELP, PRECISIONS

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model (COCO AP, per-class AP, PQ) or a detections / panoptic predictions file",
        description="Two modes. (1) --ann GT.json --results DETS.json: evaluate a COCO results file, no model; with a "
        "COCO panoptic ground truth (--gt_png_dir, --results_png_dir, or an annotation file named panoptic_*.json), "
        "panoptic quality (PQ, SQ, RQ) of COCO panoptic predictions (JSON + PNGs). (2) --model NAME_OR_CKPT (or "
        "--resume CKPT) with --coco_path DIR / --dataset_file: run the model on the validation split and evaluate "
        "it; the architecture is read from the checkpoint.",
    )
    p.add_argument("--ann", help="ground-truth COCO annotation file (mode 1; COCO panoptic JSON for PQ)")
    p.add_argument("--results", help="detections in COCO results format, or COCO panoptic predictions (mode 1)")
    p.add_argument("--gt_png_dir", metavar="DIR",
                   help="mode 1, panoptic: the ground truth's segment PNGs (default: --ann's path without .json, "
                        "else the dataset layout's, e.g. panoptic/ beside annotations/)")
    p.add_argument("--results_png_dir", metavar="DIR",
                   help="mode 1, panoptic: the predicted segment PNGs (default: --results' path without .json)")
    p.add_argument("--iou_type", default="bbox", choices=("bbox", "segm"), help="mode 1: what to evaluate")
    p.add_argument("--ignore_unknown_categories", action="store_true",
                   help="mode 1: skip detections whose category id is not in the ground truth (counted) instead of failing")
    p.add_argument("--backend", default="auto", choices=("auto", "pycocotools", "faster_coco_eval"),
                   help="mode 1: COCO evaluation implementation, the same 12 numbers (default auto: faster_coco_eval "
                        "when installed, several times faster; else pycocotools)")
    p.add_argument("--model", help="official model name, checkpoint path/URL, or a training run's folder (its "
                   "checkpoint_best.pth, else checkpoint.pth) (mode 2)")
    p.add_argument("--precision", default=FAITHFUL, choices=PRECISIONS,
                   help=f"mode 2: how the model runs (losses and AP computed from its outputs). {PRECISION_HELP}")
    r = p.add_argument_group("error report (both modes)")
    r.add_argument("--report", metavar="DIR", dest="report_dir",
                   help="write the error report into DIR: confusion matrix, per-class precision/recall/F1, F1-optimal "
                   "thresholds, PR and F1 curves, worst images (docs/evaluation.md)")
    r.add_argument("--conf", type=float, default=DEFAULT_CONF, help="report: score threshold (default %(default)s)")
    r.add_argument("--iou", type=float, default=DEFAULT_IOU, help="report: IoU threshold (default %(default)s)")
    r.add_argument("--worst", type=int, default=DEFAULT_WORST_IMAGES,
                   help="report: images with most errors drawn (default %(default)s)")
    r.add_argument("--overwrite", action="store_true", help="report: replace the files of a non-empty --report DIR")
    p.add_argument("--config", help="YAML/JSON file of options")
    add_config_arguments(p, groups=("data", "run"), include=("batch_size", "resume"),
                         exclude=("eval", "overwrite", "report", "logger", "augment"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.report_dir:
        check_report_dir(Path(args.report_dir), args.overwrite)
    if args.ann or args.results:
        if args.precision != FAITHFUL:
            raise ConfigError("--precision applies to evaluating a model (--model), not a detections file")
        if not (args.ann and args.results):
            raise ConfigError("--ann and --results go together (evaluate a detections file against its ground truth)")
        if args.gt_png_dir or args.results_png_dir or Path(args.ann).name.startswith("panoptic_"):
            if args.report_dir:
                raise ConfigError("--report applies to detections files and models, not to panoptic predictions")
            return _evaluate_panoptic_file(args)
        return _evaluate_file(args)
    if args.gt_png_dir or args.results_png_dir:
        raise ConfigError("--gt_png_dir / --results_png_dir go with --ann and --results (panoptic predictions files)")
    return _evaluate_model(args)


def _evaluate_panoptic_file(args: argparse.Namespace) -> int:
    from ..evaluation.panoptic import evaluate_panoptic_files
    from ..evaluation.tables import format_pq_per_class_table, format_pq_table

    result = evaluate_panoptic_files(args.ann, args.results, args.gt_png_dir, args.results_png_dir)
    print(f"panoptic quality of {args.results} on {result.num_images} images")
    print(format_pq_table(result.groups))
    print(format_pq_per_class_table([r for r in result.per_class if r["tp"] + r["fp"] + r["fn"]]))
    return 0


def _evaluate_file(args: argparse.Namespace) -> int:
    from ..evaluation.results_file import evaluate_results_file
    from ..evaluation.tables import format_per_class_table, format_stats_table

    report = evaluate_results_file(Path(args.ann), Path(args.results), iou_type=args.iou_type, backend=args.backend,
                                   ignore_unknown_categories=args.ignore_unknown_categories)
    ignored = f" ({report.num_ignored} with unknown category ids ignored)" if report.num_ignored else ""
    print(f"{report.num_detections} detections on {report.num_images} images{ignored}")
    print(format_stats_table(report.stats, title=args.iou_type))
    print(format_per_class_table(report.per_class))
    if args.report_dir:
        _file_report(args, report)
    return 0


def check_report_dir(folder: Path, overwrite: bool) -> None:
    """``--report DIR`` must be new, empty or (with --overwrite) replaceable; never a file."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--report {folder} is a file: choose a folder for the report")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputError(f"--report {folder} is not empty: choose another folder, or replace its report with --overwrite")


def _file_report(args: argparse.Namespace, evaluated) -> None:
    """The error report of a results file; the worst images are drawn when the annotation file's image folder exists."""
    from ..categories import category_names_from_coco
    from ..data.io import load_rgb_image
    from ..data.layout import images_dir_for
    from ..evaluation.report import error_report, format_report_table
    from ..viz.report import write_report

    if args.iou_type != "bbox":
        raise ConfigError("--report is for boxes: use it with --iou_type bbox")
    coco_gt = evaluated.coco_gt
    report = error_report(coco_gt, evaluated.results, category_names_from_coco(coco_gt.dataset["categories"]),
                          args.conf, args.iou, worst=args.worst)
    images = images_dir_for(Path(args.ann))
    load = None if images is None else (lambda image_id: load_rgb_image(images / coco_gt.imgs[image_id]["file_name"]))
    write_report(report, args.report_dir, coco_gt, evaluated.results, load,
                 extra={"annotations": str(args.ann), "results": str(args.results)})
    print(format_report_table(report))
    print(f"report written to {args.report_dir}{'' if images else ' (no image folder found: no worst-image pictures)'}")


def _evaluate_model(args: argparse.Namespace) -> int:
    from ..engine.evaluate import evaluate_model
    from ..inference.optimize import optimize

    cfg = config_for_model_evaluation(args)
    precision = args.precision
    evaluation = evaluate_model(cfg, run_as=lambda model: optimize(model, precision))
    if args.report_dir:
        from ..evaluation.report import format_report_table
        from ..viz.report import write_evaluation_report

        report, _ = write_evaluation_report(evaluation.result, args.report_dir, evaluation.dataset, conf=args.conf,
                                            iou=args.iou, worst=args.worst, extra={"model": cfg.resume})
        print(format_report_table(report))
        print(f"report written to {args.report_dir}")
    return 0


def config_for_model_evaluation(args: argparse.Namespace) -> DETRConfig:
    """The data and run options of the command line, the architecture of ``--model`` (or ``--resume``), whose
    weights are evaluated (``resume``)."""
    from ..data.build import config_validation_size
    from ..data.transforms import chosen_size
    from ..engine.checkpoint import load_checkpoint
    from ..inference.loading import config_from_checkpoint, run_checkpoint
    from ..models.zoo import OFFICIAL_MODELS

    source = run_checkpoint(args.model or args.resume) if (args.model or args.resume) else None
    if not source:
        raise ConfigError("give --model NAME_OR_CKPT (or --resume CKPT), or --ann with --results")
    if source in OFFICIAL_MODELS:
        spec = OFFICIAL_MODELS[source]
        model_cfg, source = spec.config(), spec.url
        model_size = (spec.image_size, spec.max_size)
    else:
        model_cfg = config_from_checkpoint(load_checkpoint(source), source)
        model_size = config_validation_size(model_cfg)
    # the images are resized as for the model's own validation unless the options say otherwise (detr predict's rule)
    given = given_options(args).keys()
    image_size, max_size = chosen_size(args.image_size if "image_size" in given else None,
                                       args.max_size if "max_size" in given else None, model_size)
    size = {"image_size": image_size, "max_size": max_size}
    if not {"image_size", "max_size"} & given:
        log.info("evaluating at the model's input size: shorter side %d, longer side at most %d (--image_size and "
                 "--max_size to change)", *model_size)
    # the checkpoint provides every weight: no backbone download
    return config_from_args(args).replace(**model_cfg.model.to_dict(), **size, backbone_weights="none", eval=True,
                                          resume=source, pretrained="")
