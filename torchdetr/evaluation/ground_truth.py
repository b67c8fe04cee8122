"""COCO ground truth for evaluation: an annotation file read, checked and indexed by pycocotools.

The checks are the data layer's one COCO validator (:func:`torchdetr.data.validate.validate_coco`), the
same that loading a dataset and ``detr data check`` use; evaluation stops at its fatal problems and,
because COCOeval reads it, at a missing ``area``.
"""

from __future__ import annotations

from pathlib import Path

from pycocotools.coco import COCO

from ..data.validate import MISSING_AREA, Problem, validate_coco
from .checks import CocoFormatError, check_iou_type, load_json, quiet


def _stops_evaluation(problem: Problem) -> bool:
    """Ground-truth problems evaluation cannot get past: the fatal ones, and a missing ``area`` (COCOeval reads it)."""
    return problem.fatal or problem.kind == MISSING_AREA


def validate_coco_gt(dataset: object, source: str = "ground truth", iou_type: str = "bbox") -> None:
    """Check that a COCO annotation dict can be evaluated; raise :class:`CocoFormatError` naming the fault.

    The first problem that stops evaluation is raised as one line naming ``source``, the entry, the field and
    the value. For segm, images need integer ``height``/``width`` and annotations a valid ``segmentation``.
    """
    check_iou_type(iou_type)
    problem = validate_coco(dataset, source, masks=iou_type == "segm").first(_stops_evaluation)
    if problem is not None:
        raise CocoFormatError(problem.one_line())


def load_coco_gt(ann_file: str | Path, iou_type: str = "bbox") -> COCO:
    """Read and validate a COCO annotation file; returns a pycocotools ``COCO``."""
    dataset = load_json(ann_file, "annotation file")
    validate_coco_gt(dataset, str(ann_file), iou_type)
    coco = COCO()
    coco.dataset = dataset
    with quiet():
        coco.createIndex()
    return coco
