"""Evaluating a COCO results file against its ground truth, without a model (``detr eval --ann --results``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..categories import category_names_from_coco
from .checks import check_backend, check_iou_type, load_json
from .coco import PerClassAP, count_gt_instances, per_class_ap_from_eval, run_coco_eval
from .ground_truth import load_coco_gt
from .results import validate_results


@dataclass
class EvalReport:
    """The outcome of evaluating one results file (:func:`evaluate_results_file`)."""

    iou_type: str
    stats: list[float]  # the 12 COCOeval stats, in the order of STAT_NAMES (-1: no ground truth)
    per_class: list[PerClassAP]
    num_images: int  # images evaluated: every image of the ground truth
    num_detections: int  # detections evaluated
    num_ignored: int = 0  # detections of unknown categories skipped (only with ignore_unknown_categories)
    summary: str = field(default="", repr=False)  # pycocotools' printed summary
    coco_gt: Any = field(default=None, repr=False)  # the ground truth (pycocotools COCO)
    results: list[dict[str, Any]] = field(default_factory=list, repr=False)  # the validated detections


def evaluate_results_file(
    ann_file: str | Path, results_file: str | Path, iou_type: str = "bbox", backend: str = "pycocotools",
    ignore_unknown_categories: bool = False,
) -> EvalReport:
    """Evaluate a COCO results file against a COCO annotation file, without a model.

    Every image of the annotation file is evaluated (images without detections count as missed), as
    with pycocotools' defaults. For segm, a ``bbox`` in the results is ignored: areas come from the
    masks. Raises :class:`CocoFormatError` (a ``DataError``) or ``MissingFileError`` with a message naming
    the file, entry and field at fault.
    """
    check_iou_type(iou_type)
    check_backend(backend)
    coco_gt = load_coco_gt(ann_file, iou_type)
    raw = load_json(results_file, "results file")
    results, ignored = validate_results(raw, coco_gt, iou_type, str(results_file), ignore_unknown_categories)
    img_ids = sorted(coco_gt.imgs)
    coco_eval, summary = run_coco_eval(coco_gt, results, iou_type, img_ids, backend)
    names = category_names_from_coco(coco_gt.dataset["categories"])
    return EvalReport(
        iou_type=iou_type,
        stats=[float(s) for s in coco_eval.stats],
        per_class=per_class_ap_from_eval(coco_eval, names, count_gt_instances(coco_gt, img_ids)),
        num_images=len(img_ids),
        num_detections=len(results),
        num_ignored=ignored,
        summary=summary,
        coco_gt=coco_gt,
        results=results,
    )
