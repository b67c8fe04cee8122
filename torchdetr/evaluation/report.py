"""The error report of a detector: where it confuses classes, misses objects and sees things that are not there.

From a COCO ground truth and COCO results (``evaluation.results``):

- **Confusion matrix** at a score threshold ``conf`` and an IoU threshold ``iou``: (K+1)×(K+1) counts,
  rows = ground truth, columns = prediction, the last row and column the background. In each image the
  detections scoring at least ``conf`` are matched one-to-one to the ground-truth boxes they overlap with
  IoU ≥ ``iou``: pairs of the same class first, then by IoU, highest first (the rule of Ultralytics and
  ``supervision``'s ``ConfusionMatrix``). A matched pair counts at (its ground-truth class, its predicted
  class) — the diagonal, or a confusion; an unmatched ground-truth box at (class, background) — a missed
  object; an unmatched detection at (background, class) — a false positive. Crowd regions are left out.
- **Precision, recall, F1 per class at ``conf``** from the matrix: TP = the diagonal, FP = the rest of the
  class's column, FN = the rest of its row.
- **The F1-optimal score threshold per class** (and over all classes): every score a detection of the class
  has is a candidate threshold; precision and recall at each come from pycocotools' matching at ``iou``
  (``COCOeval.evaluate``: class-aware, highest score first); the threshold with the highest F1 wins.
- **The worst images**: most false positives + false negatives at ``conf``/``iou`` (a confusion counts once
  as each).

Nothing here draws: ``viz.report`` renders the matrix, the curves and the worst images.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from ..errors import ConfigError
from .checks import quiet
from .coco import eval_to_dict, load_results

BACKGROUND = "background"
DEFAULT_CONF = 0.5
DEFAULT_IOU = 0.5
DEFAULT_WORST_IMAGES = 8
MIN_MAX_DETS = 100  # COCOeval's largest maxDets; raised to the most detections an image has


@dataclass
class ClassErrors:
    """One class at the report's thresholds (``precision``/``recall``/``f1`` None when undefined: 0/0).

    ``best_threshold``: the score threshold with the highest F1 (``best_f1``, with ``best_precision`` and
    ``best_recall`` there); None when the class has no ground truth or no detection.
    """

    category_id: int
    name: str
    num_gt: int
    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None
    best_threshold: float | None = None
    best_f1: float | None = None
    best_precision: float | None = None
    best_recall: float | None = None


@dataclass
class ImageErrors:
    """The errors of one image at the report's thresholds: false positives (detections not matched to a box of
    their class) and false negatives (boxes not matched by a detection of their class)."""

    image_id: int
    fp: int
    fn: int
    num_gt: int
    num_detections: int

    @property
    def errors(self) -> int:
        return self.fp + self.fn


@dataclass
class ScoreSweep:
    """Precision, recall and F1 [D] if the threshold were each detection score ``scores`` [D] (descending)."""

    scores: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    num_gt: int

    def best(self) -> tuple[float, float, float, float] | None:
        """``(threshold, f1, precision, recall)`` at the highest F1 (the highest threshold among equals); None when
        no threshold finds an object (F1 0 everywhere)."""
        if not len(self.scores) or self.num_gt == 0 or not self.f1.max() > 0:
            return None
        i = int(np.argmax(self.f1))
        return float(self.scores[i]), float(self.f1[i]), float(self.precision[i]), float(self.recall[i])


@dataclass
class ErrorReport:
    """Everything the report holds; ``matrix`` [K+1, K+1] int64 (rows ground truth, columns prediction)."""

    classes: list[str]  # class names, background last
    category_ids: list[int]  # the category id of each row/column but the last
    matrix: np.ndarray
    conf: float
    iou: float
    per_class: list[ClassErrors]
    images: list[ImageErrors]  # worst first
    sweeps: dict[int, ScoreSweep] = field(default_factory=dict)  # category id (or ALL) → F1 over the threshold
    overall: ClassErrors | None = None  # all classes together (micro average)
    unknown_detections: int = 0  # detections whose category id is not a class of the ground truth
    pr_eval: dict[str, Any] | None = None  # COCOeval's accumulated arrays at ``iou`` (PR curves; eval_to_dict)

    def normalized(self) -> np.ndarray:
        """The matrix with each row divided by its sum (the share of each class's boxes per prediction); 0 rows stay 0."""
        sums = self.matrix.sum(axis=1, keepdims=True)
        return np.divide(self.matrix, sums, out=np.zeros(self.matrix.shape, dtype=np.float64), where=sums > 0)

    def confusion_json(self) -> dict[str, Any]:
        """``confusion_matrix.json``: ``classes`` (background last), ``matrix`` (counts), ``conf``, ``iou``,
        ``rows``/``columns`` saying which axis is which, ``category_ids``."""
        return {"classes": self.classes, "matrix": self.matrix.tolist(), "rows": "ground truth",
                "columns": "prediction", "conf": self.conf, "iou": self.iou, "category_ids": self.category_ids}

    def summary_json(self) -> dict[str, Any]:
        """``report.json``: thresholds, per-class errors and F1-optimal thresholds, overall, worst images."""
        return {
            "conf": self.conf, "iou": self.iou,
            "overall": asdict(self.overall) if self.overall else None,
            "per_class": [asdict(c) for c in self.per_class],
            "worst_images": [{**asdict(i), "errors": i.errors} for i in self.images],
            "unknown_detections": self.unknown_detections,
        }


ALL = -1  # key of the all-classes sweep in ``ErrorReport.sweeps``


def _check_threshold(name: str, value: float, low_open: bool = False) -> None:
    if not (0 < value <= 1 if low_open else 0 <= value <= 1):
        raise ConfigError(f"--{name} {value}: must be in {'(0, 1]' if low_open else '[0, 1]'}")


def _xyxy(boxes: Sequence[Sequence[float]]) -> torch.Tensor:
    """COCO [x, y, w, h] boxes → [N, 4] float64 (x1, y1, x2, y2)."""
    if not len(boxes):
        return torch.zeros((0, 4), dtype=torch.float64)
    xywh = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)


def match_image(
    gt_boxes: torch.Tensor, gt_classes: np.ndarray, det_boxes: torch.Tensor, det_classes: np.ndarray, iou: float,
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """One image's one-to-one matching: ``(pairs [(gt index, detection index)], unmatched gt [N] bool,
    unmatched detections [M] bool)``.

    ``gt_boxes`` [N, 4], ``det_boxes`` [M, 4] xyxy; ``*_classes`` [N], [M] class indices. Candidate pairs
    have IoU ≥ ``iou``; they are taken same-class first, then by IoU (highest first), each box at most once.
    """
    pairs: list[tuple[int, int]] = []
    n, m = len(gt_boxes), len(det_boxes)
    if n and m:
        ious = box_iou(gt_boxes, det_boxes).numpy()
        gt_index, det_index = np.nonzero(ious >= iou)
        same = gt_classes[gt_index] == det_classes[det_index]
        order = np.lexsort((-ious[gt_index, det_index], ~same))  # same class first, then IoU descending
        taken_gt, taken_det = np.zeros(n, bool), np.zeros(m, bool)
        for k in order:
            g, d = int(gt_index[k]), int(det_index[k])
            if not taken_gt[g] and not taken_det[d]:
                taken_gt[g] = taken_det[d] = True
                pairs.append((g, d))
    unmatched_gt = np.ones(n, bool)
    unmatched_det = np.ones(m, bool)
    for g, d in pairs:
        unmatched_gt[g] = unmatched_det[d] = False
    return pairs, unmatched_gt, unmatched_det


def confusion_matrix(
    coco_gt: COCO, results: Sequence[Mapping[str, Any]], conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU,
    image_ids: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[int], list[ImageErrors], int]:
    """``(matrix [K+1, K+1], category ids, per-image errors, unknown detections)`` (see the module docstring).

    Rows/columns follow the sorted category ids of ``coco_gt``, then the background. ``image_ids``: the images
    evaluated (default: every image of ``coco_gt``). Detections of category ids ``coco_gt`` does not have are
    left out and counted.
    """
    _check_threshold("conf", conf)
    _check_threshold("iou", iou, low_open=True)
    category_ids = sorted(int(c) for c in coco_gt.getCatIds())
    index = {cat: i for i, cat in enumerate(category_ids)}
    background = len(category_ids)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted({int(i) for i in image_ids})
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    unknown = 0
    for det in results:
        if int(det["category_id"]) not in index:
            unknown += 1
            continue
        if float(det["score"]) >= conf:
            by_image.setdefault(int(det["image_id"]), []).append(det)
    images = []
    for image_id in image_ids:
        anns = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0) and a["category_id"] in index]
        dets = by_image.get(image_id, [])
        gt_classes = np.array([index[a["category_id"]] for a in anns], dtype=np.int64)
        det_classes = np.array([index[int(d["category_id"])] for d in dets], dtype=np.int64)
        pairs, unmatched_gt, unmatched_det = match_image(
            _xyxy([a["bbox"] for a in anns]), gt_classes, _xyxy([d["bbox"] for d in dets]), det_classes, iou)
        wrong = 0
        for g, d in pairs:
            matrix[gt_classes[g], det_classes[d]] += 1
            wrong += int(gt_classes[g] != det_classes[d])
        np.add.at(matrix[:, background], gt_classes[unmatched_gt], 1)
        np.add.at(matrix[background], det_classes[unmatched_det], 1)
        images.append(ImageErrors(image_id=image_id, fp=int(unmatched_det.sum()) + wrong,
                                  fn=int(unmatched_gt.sum()) + wrong, num_gt=len(anns), num_detections=len(dets)))
    return matrix, category_ids, images, unknown


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _f1(tp: int, fp: int, fn: int) -> float | None:
    """2·TP / (2·TP + FP + FN): the harmonic mean of precision and recall, 0 without true positives, None for 0/0."""
    return _ratio(2 * tp, 2 * tp + fp + fn)


def class_errors(matrix: np.ndarray, category_ids: Sequence[int], names: Mapping[int, str]) -> list[ClassErrors]:
    """TP, FP, FN, precision, recall and F1 of each class from a confusion matrix [K+1, K+1]."""
    rows = []
    for k, cat in enumerate(category_ids):
        tp = int(matrix[k, k])
        fp = int(matrix[:, k].sum()) - tp
        fn = int(matrix[k, :].sum()) - tp
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        rows.append(ClassErrors(category_id=int(cat), name=str(names.get(int(cat), cat)), num_gt=tp + fn, tp=tp, fp=fp,
                                fn=fn, precision=precision, recall=recall, f1=_f1(tp, fp, fn)))
    return rows


def score_sweeps(
    coco_gt: COCO, results: Sequence[Mapping[str, Any]], iou: float = DEFAULT_IOU, image_ids: Sequence[int] | None = None,
    category_names: Mapping[int, str] | None = None,
) -> tuple[dict[int, ScoreSweep], dict[str, Any]]:
    """Per category id (and ``ALL``): precision, recall and F1 if the score threshold were each detection's score;
    and the accumulated evaluation at ``iou`` (``evaluation.coco.eval_to_dict``: the PR curves).

    pycocotools decides which detections are true positives (``COCOeval.evaluate`` at the single IoU
    threshold ``iou``, area "all", every detection of an image kept): exactly the matching behind AP, read
    before its interpolation. Crowd regions and detections matched to them are ignored, as in AP.
    """
    _check_threshold("iou", iou, low_open=True)
    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted({int(i) for i in image_ids})
    known = set(coco_gt.getCatIds())
    dets = [dict(r) for r in results if int(r["category_id"]) in known]
    per_image: dict[int, int] = {}
    for d in dets:
        per_image[int(d["image_id"])] = per_image.get(int(d["image_id"]), 0) + 1
    coco_eval = _evaluate_at(coco_gt, dets, iou, image_ids, max(MIN_MAX_DETS, *per_image.values(), 0))
    area = coco_eval.params.areaRng[0]
    scores: dict[int, list[np.ndarray]] = {c: [] for c in known}
    true: dict[int, list[np.ndarray]] = {c: [] for c in known}
    num_gt = dict.fromkeys(known, 0)
    for record in coco_eval.evalImgs:
        if record is None or list(record["aRng"]) != list(area):
            continue
        cat = int(record["category_id"])
        keep = ~np.asarray(record["dtIgnore"], dtype=bool).reshape(1, -1)[0]
        scores[cat].append(np.asarray(record["dtScores"], dtype=np.float64)[keep])
        true[cat].append(np.asarray(record["dtMatches"]).reshape(1, -1)[0][keep] > 0)
        num_gt[cat] += int((~np.asarray(record["gtIgnore"], dtype=bool)).sum())
    sweeps = {cat: _sweep(np.concatenate(scores[cat] or [np.zeros(0)]),
                          np.concatenate(true[cat] or [np.zeros(0, bool)]), num_gt[cat]) for cat in known}
    sweeps[ALL] = _sweep(np.concatenate([np.concatenate(v) for v in scores.values() if v] or [np.zeros(0)]),
                         np.concatenate([np.concatenate(v) for v in true.values() if v] or [np.zeros(0, bool)]),
                         sum(num_gt.values()))
    return sweeps, eval_to_dict(coco_eval, category_names)


def _evaluate_at(coco_gt: COCO, dets: list[dict[str, Any]], iou: float, image_ids: list[int], max_dets: int) -> COCOeval:
    """``COCOeval.evaluate`` at one IoU threshold (area "all", up to ``max_dets`` detections per image)."""
    gt = copy.deepcopy(coco_gt)  # COCOeval writes into the ground truth's annotations
    with quiet():
        dt = load_results(gt, dets)
        coco_eval = COCOeval(gt, dt, iouType="bbox")
        coco_eval.params.imgIds = image_ids
        coco_eval.params.iouThrs = np.array([iou])
        coco_eval.params.areaRng = [coco_eval.params.areaRng[0]]
        coco_eval.params.areaRngLbl = ["all"]
        coco_eval.params.maxDets = [max_dets]
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def _sweep(scores: np.ndarray, true: np.ndarray, num_gt: int) -> ScoreSweep:
    """Cumulative precision/recall/F1 with the detections sorted by score, one point per distinct score."""
    order = np.argsort(-scores, kind="mergesort")
    scores, true = scores[order], true[order]
    tp = np.cumsum(true)
    fp = np.cumsum(~true)
    last_of_score = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, bool)
    scores, tp, fp = scores[last_of_score], tp[last_of_score], fp[last_of_score]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / num_gt if num_gt else np.zeros(len(tp))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return ScoreSweep(scores=scores, precision=precision, recall=recall, f1=f1, num_gt=num_gt)


def error_report(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    category_names: Mapping[int, str] | None = None,
    conf: float = DEFAULT_CONF,
    iou: float = DEFAULT_IOU,
    image_ids: Sequence[int] | None = None,
    worst: int = DEFAULT_WORST_IMAGES,
) -> ErrorReport:
    """The whole report (see the module docstring) of ``results`` (COCO results) against ``coco_gt``.

    ``category_names``: id → name (default: ``coco_gt``'s); ``worst``: how many images :attr:`ErrorReport.images`
    keeps (those with errors, most first).
    """
    names = dict(category_names) if category_names is not None else {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    matrix, category_ids, images, unknown = confusion_matrix(coco_gt, results, conf, iou, image_ids)
    per_class = class_errors(matrix, category_ids, names)
    sweeps, pr_eval = score_sweeps(coco_gt, results, iou, image_ids, names)
    for row in per_class:
        best = sweeps[row.category_id].best()
        if best is not None:
            row.best_threshold, row.best_f1, row.best_precision, row.best_recall = best
    k = len(category_ids)
    tp = int(np.trace(matrix[:k, :k]))
    fp = int(matrix[:, :k].sum()) - tp
    fn = int(matrix[:k, :].sum()) - tp
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    overall = ClassErrors(category_id=ALL, name="all", num_gt=tp + fn, tp=tp, fp=fp, fn=fn, precision=precision,
                          recall=recall, f1=_f1(tp, fp, fn))
    best = sweeps[ALL].best()
    if best is not None:
        overall.best_threshold, overall.best_f1, overall.best_precision, overall.best_recall = best
    ranked = sorted((i for i in images if i.errors), key=lambda i: (-i.errors, i.image_id))[:max(worst, 0)]
    return ErrorReport(classes=[names.get(c, str(c)) for c in category_ids] + [BACKGROUND], category_ids=category_ids,
                       matrix=matrix, conf=conf, iou=iou, per_class=per_class, images=ranked, sweeps=sweeps,
                       overall=overall, unknown_detections=unknown, pr_eval=pr_eval)


def format_report_table(report: ErrorReport) -> str:
    """Per-class TP/FP/FN, precision, recall, F1 at the report's thresholds and the F1-optimal threshold."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    width = max([len("class"), *(len(c.name) for c in report.per_class)])
    lines = [f"errors at score >= {report.conf:g}, IoU >= {report.iou:g} (best threshold: the score with the highest F1)",
             f"{'class':<{width}}  {'#GT':>5}  {'TP':>5}  {'FP':>5}  {'FN':>5}  {'prec':>5}  {'rec':>5}  {'F1':>5}  "
             f"{'best thr':>8}  {'best F1':>7}"]
    for row in [*report.per_class, *([report.overall] if report.overall else [])]:
        lines.append(f"{row.name:<{width}}  {row.num_gt:>5}  {row.tp:>5}  {row.fp:>5}  {row.fn:>5}  "
                     f"{number(row.precision):>5}  {number(row.recall):>5}  {number(row.f1):>5}  "
                     f"{number(row.best_threshold):>8}  {number(row.best_f1):>7}")
    return "\n".join(lines)
