"""Panoptic quality (PQ, SQ, RQ) by its published definition, without panopticapi.

Kirillov et al., "Panoptic Segmentation" (CVPR 2019), with the COCO panoptic evaluation rules:

- a predicted and a ground-truth segment of the same category **match** when their IoU is strictly above
  0.5 (so matches are unique); the IoU's union leaves out the prediction's pixels on void (ground-truth id 0);
- an unmatched ground-truth segment is a false negative (FN), unless it is a crowd region;
- an unmatched prediction is a false positive (FP), unless more than half of its pixels lie on void or on
  crowd regions of its own category (it is then ignored);
- per category c, over the whole set: PQ_c = Σ IoU(TP) / (TP + ½ FP + ½ FN), SQ_c = Σ IoU(TP) / TP,
  RQ_c = TP / (TP + ½ FP + ½ FN); PQ/SQ/RQ of All, Things and Stuff are the means over the categories of the
  group with TP + FP + FN > 0 (their number is N; with N = 0 the means are undefined, NaN).

Each image costs one ``bincount`` over its pixels: ground-truth and predicted ids are mapped to segment
indices (0 = void) and combined into one index per pixel, which gives every intersection at once (the
confusion matrix panopticapi builds with ``np.unique``); matching and counting then work on that matrix.
Segment areas are the pixel counts of the PNGs. Differences from panopticapi, all on inputs it does not
check: its ground-truth areas are the JSON's ``area`` (equal to the pixel counts on consistent data, which
``detr data check`` verifies), it keeps only the last crowd region of a category per image (COCO has at
most one), it skips ground-truth PNG ids that its JSON does not list, and it crashes (or, for those ids,
stays silent) where this module raises a one-line :class:`~torchdetr.errors.DataError` (ids in a PNG and not in
its JSON or the reverse, unknown categories, sizes that differ, images without prediction) or returns NaN (no
category in a group).

:class:`PQStat` accumulates; :func:`pq_image` scores one image; :class:`PanopticEvaluator` collects a
model's post-processed outputs during evaluation; :func:`evaluate_panoptic_files` scores prediction files
(``detr eval --ann --gt_png_dir --results --results_png_dir``).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict

import numpy as np
import torch.distributed as dist
from PIL import Image

from ..atomic_write import replace_atomic, write_atomic
from ..data.io import load_segment_ids
from ..data.layout import panoptic_png_dir_for
from ..data.panoptic import PanopticCategory, PanopticImage, load_panoptic_json, panoptic_categories
from ..errors import DataError, MissingFileError
from ..structures import id2rgb, rgb2id
from .checks import CocoFormatError, is_int, load_json, short

log = logging.getLogger(__name__)

VOID = 0  # ground-truth (and unlisted predicted) pixels of id 0 are unlabelled
MATCH_IOU = 0.5  # a match needs IoU > MATCH_IOU (strictly)
IGNORED_FRACTION = 0.5  # an unmatched prediction with more than this fraction on void/crowd is not a FP
GROUPS: dict[str, bool | None] = {"All": None, "Things": True, "Stuff": False}  # name → isthing filter
LOG_KEYS: dict[str, str] = {"All": "PQ_all", "Things": "PQ_th", "Stuff": "PQ_st"}  # the original's log.txt keys
PREDICTIONS_FILE = "predictions.json"  # written with the PNGs into the evaluation's output folder, as the original


class GroupPQ(TypedDict):
    """PQ, SQ, RQ (in [0, 1]) of a group of categories, and N: the categories counted."""

    pq: float
    sq: float
    rq: float
    n: int


class ClassPQ(TypedDict):
    """PQ, SQ, RQ of one category (NaN when it has no TP, FP or FN) and its counts."""

    category_id: int
    name: str
    isthing: bool
    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int


@dataclass
class PQResult:
    """PQ/SQ/RQ per group (``All``, ``Things``, ``Stuff``) and per class, over ``num_images`` images."""

    groups: dict[str, GroupPQ]
    per_class: list[ClassPQ]
    num_images: int = 0

    @property
    def pq(self) -> float:
        """PQ of all categories."""
        return self.groups["All"]["pq"]

    def log_stats(self) -> dict[str, GroupPQ]:
        """``{"PQ_all": {pq, sq, rq, n}, "PQ_th": ..., "PQ_st": ...}``: the entries of the original's evaluation stats."""
        return {LOG_KEYS[name]: dict(group) for name, group in self.groups.items()}  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------
# Accumulation
# ----------------------------------------------------------------------------------------------
@dataclass
class PQStat:
    """TP, FP, FN counts and the IoU sum of the true positives, per category id."""

    tp: dict[int, int] = field(default_factory=dict)
    fp: dict[int, int] = field(default_factory=dict)
    fn: dict[int, int] = field(default_factory=dict)
    iou: dict[int, float] = field(default_factory=dict)

    def __iadd__(self, other: PQStat) -> PQStat:
        for mine, theirs in ((self.tp, other.tp), (self.fp, other.fp), (self.fn, other.fn), (self.iou, other.iou)):
            for category_id, value in theirs.items():
                mine[category_id] = mine.get(category_id, 0) + value
        return self

    def result(self, categories: Mapping[int, PanopticCategory], num_images: int = 0) -> PQResult:
        """PQ/SQ/RQ per class and per group for ``categories`` (the ground truth's)."""
        per_class: list[ClassPQ] = []
        for cid, category in categories.items():
            tp, fp, fn, iou = self.tp.get(cid, 0), self.fp.get(cid, 0), self.fn.get(cid, 0), self.iou.get(cid, 0.0)
            denominator = tp + 0.5 * fp + 0.5 * fn
            pq, sq, rq = (iou / denominator, iou / tp if tp else 0.0, tp / denominator) if denominator else (math.nan,) * 3
            per_class.append(ClassPQ(category_id=cid, name=category.name, isthing=category.isthing, pq=pq, sq=sq, rq=rq,
                                     tp=tp, fp=fp, fn=fn))
        groups: dict[str, GroupPQ] = {}
        for name, isthing in GROUPS.items():
            counted = [c for c in per_class if (isthing is None or c["isthing"] == isthing) and not math.isnan(c["pq"])]
            n = len(counted)
            groups[name] = GroupPQ(**{k: sum(c[k] for c in counted) / n if n else math.nan for k in ("pq", "sq", "rq")},
                                   n=n)
        return PQResult(groups=groups, per_class=per_class, num_images=num_images)


def _segment_index(id_map: np.ndarray, segment_ids: np.ndarray, what: str) -> np.ndarray:
    """Per pixel: 1 + the index in ``segment_ids`` of its id, 0 for void (id 0 when not a segment id).

    Raises DataError for ids that are neither segment ids nor void.
    """
    if len(segment_ids) == 0:
        found, index = np.zeros(id_map.shape, dtype=bool), np.zeros(id_map.shape, dtype=np.int64)
    else:
        order = np.argsort(segment_ids, kind="stable")
        keys = segment_ids[order]
        position = np.minimum(np.searchsorted(keys, id_map), len(keys) - 1)
        found = keys[position] == id_map
        index = order[position] + 1
    unknown = ~found & (id_map != VOID)
    if unknown.any():
        listed = sorted(set(np.unique(id_map[unknown]).tolist()))
        raise DataError(f"{what}: segment id(s) {short(listed)} are in the PNG but not in segments_info")
    return np.where(found, index, 0)


def _segment_table(segments: Sequence[Mapping[str, Any]], what: str, categories: Mapping[int, Any]) -> tuple[np.ndarray, ...]:
    """``(ids, category ids, crowd flags)`` of ``segments_info``, checked (unique ids, known categories)."""
    ids = np.array([s["id"] for s in segments], dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        values, counts = np.unique(ids, return_counts=True)
        raise DataError(f"{what}: segment id(s) {values[counts > 1].tolist()} listed twice in segments_info")
    category_ids = np.array([s["category_id"] for s in segments], dtype=np.int64)
    unknown = [int(c) for c in category_ids if int(c) not in categories]
    if unknown:
        raise DataError(f"{what}: unknown category_id {unknown[0]} (not in the ground truth's categories)")
    crowd = np.array([bool(s.get("iscrowd", 0)) for s in segments], dtype=bool)
    return ids, category_ids, crowd


def pq_image(
    ground_truth: PanopticImage,
    prediction: PanopticImage,
    categories: Mapping[int, PanopticCategory],
    image: str = "image",
) -> PQStat:
    """TP/FP/FN and IoU sums of one image (the rules of the module docstring).

    ``ground_truth``/``prediction``: id maps int [H, W] and their ``segments_info`` (``id``, ``category_id``;
    ``iscrowd`` for the ground truth). A predicted id 0 is a segment when ``segments_info`` lists it, void
    otherwise. ``image`` names the image in errors.

    Raises:
        DataError: sizes differ, a PNG id missing from its segments_info (or a listed prediction without pixels),
            a duplicate segment id, or a category not in ``categories``.
    """
    gt_map, pred_map = np.asarray(ground_truth.id_map), np.asarray(prediction.id_map)
    if gt_map.shape != pred_map.shape:
        raise DataError(f"{image}: the prediction is {pred_map.shape[1]}x{pred_map.shape[0]} (width x height) but the "
                        f"ground truth is {gt_map.shape[1]}x{gt_map.shape[0]}")
    gt_ids, gt_cats, gt_crowd = _segment_table(ground_truth.segments, f"{image} (ground truth)", categories)
    pred_ids, pred_cats, _ = _segment_table(prediction.segments, f"{image} (prediction)", categories)
    num_gt, num_pred = len(gt_ids), len(pred_ids)
    gt_index = _segment_index(gt_map, gt_ids, f"{image} (ground truth)")
    pred_index = _segment_index(pred_map, pred_ids, f"{image} (prediction)")

    # intersection[g, p]: pixels of ground-truth index g (0 = void) and predicted index p (0 = void)
    combined = gt_index.ravel() * (num_pred + 1) + pred_index.ravel()
    intersection = np.bincount(combined, minlength=(num_gt + 1) * (num_pred + 1)).reshape(num_gt + 1, num_pred + 1)
    pred_area, gt_area = intersection.sum(0)[1:], intersection.sum(1)[1:]
    on_void = intersection[0, 1:]  # predicted pixels on ground-truth void
    overlap = intersection[1:, 1:]
    empty = np.flatnonzero(pred_area == 0)
    if len(empty):
        raise DataError(f"{image} (prediction): segment id(s) {short(pred_ids[empty].tolist())} are in segments_info but "
                        "not in the PNG")

    same_category = gt_cats[:, None] == pred_cats[None, :]
    union = gt_area[:, None] + pred_area[None, :] - overlap - on_void[None, :]
    matched = same_category & ~gt_crowd[:, None] & (overlap > MATCH_IOU * union)  # IoU > 0.5, exactly in integers
    iou = np.divide(overlap, union, out=np.zeros(overlap.shape, dtype=np.float64), where=matched)

    stat = PQStat()
    gt_matched, pred_matched = matched.any(1), matched.any(0)
    for g in np.flatnonzero(gt_matched):
        cid = int(gt_cats[g])
        stat.tp[cid] = stat.tp.get(cid, 0) + 1
        stat.iou[cid] = stat.iou.get(cid, 0.0) + float(iou[g].max())
    for g in np.flatnonzero(~gt_matched & ~gt_crowd):
        cid = int(gt_cats[g])
        stat.fn[cid] = stat.fn.get(cid, 0) + 1
    on_crowd = (overlap * (gt_crowd[:, None] & same_category)).sum(0)  # on crowd regions of the prediction's class
    ignored = (on_void + on_crowd) > IGNORED_FRACTION * pred_area
    for p in np.flatnonzero(~pred_matched & ~ignored):
        cid = int(pred_cats[p])
        stat.fp[cid] = stat.fp.get(cid, 0) + 1
    return stat


# ----------------------------------------------------------------------------------------------
# During a model's evaluation
# ----------------------------------------------------------------------------------------------
class PanopticGroundTruth(Protocol):
    """What the evaluator needs of a panoptic dataset (``data.panoptic.CocoPanoptic`` has it)."""

    categories: dict[int, PanopticCategory]

    def ground_truth(self, image_id: int) -> PanopticImage: ...


def prediction_from_postprocess(output: Mapping[str, Any], categories: Mapping[int, Any]) -> tuple[PanopticImage, int]:
    """``PostProcessPanoptic``'s output of one image → a prediction in the COCO format, and the segments dropped.

    The post-processor numbers segments from 0, which COCO PNGs reserve for void: ids become 1, 2, …
    Segments of a class that is not a category of the ground truth (a class id the data never uses) cannot be
    scored: their pixels become void, and they are counted in the returned number.
    """
    raw = rgb2id(np.asarray(Image.open(io.BytesIO(output["png_string"])).convert("RGB")))
    lookup = np.zeros(max([s["id"] for s in output["segments_info"]], default=0) + 1, dtype=np.int64)
    segments, dropped = [], 0
    for s in output["segments_info"]:
        if int(s["category_id"]) not in categories:
            dropped += 1
            continue
        lookup[s["id"]] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": int(s["category_id"]),
                         "isthing": bool(getattr(categories[int(s["category_id"])], "isthing", True)),
                         "area": int(s["area"])})
    id_map = np.where(raw < len(lookup), lookup[np.minimum(raw, len(lookup) - 1)], VOID)
    return PanopticImage(id_map, segments), dropped


class PanopticEvaluator:
    """Collects a mask model's panoptic predictions over a dataset and computes PQ.

    Usage (the original DETR's ``PanopticEvaluator``)::

        evaluator = PanopticEvaluator(dataset)            # a CocoPanoptic
        for batch ...:
            evaluator.update({image_id: postprocess_panoptic_output, ...})
        evaluator.synchronize_between_processes()
        result = evaluator.summarize()                     # PQResult

    With ``output_dir``, each prediction is also written as ``{image_id:012d}.png`` with
    ``predictions.json`` (COCO panoptic format), which ``detr eval --results ... --results_png_dir ...``
    scores to the same numbers. An image given twice (a DistributedSampler's padding) counts once.
    """

    def __init__(self, ground_truth: PanopticGroundTruth, output_dir: str | Path | None = None) -> None:
        self.ground_truth = ground_truth
        self.categories = dict(ground_truth.categories)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.stats: dict[int, PQStat] = {}
        self.predictions: dict[int, dict[str, Any]] = {}  # image id → COCO panoptic annotation (when writing)
        self.dropped = 0
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)

    def update(self, predictions: Mapping[int, Mapping[str, Any]]) -> None:
        """Score the predictions of some images: image id → ``PostProcessPanoptic`` output (``png_string``,
        ``segments_info``) at the image's original size."""
        for image_id, output in predictions.items():
            image_id = int(image_id)
            if image_id in self.stats:
                continue
            prediction, dropped = prediction_from_postprocess(output, self.categories)
            self.dropped += dropped
            self.stats[image_id] = pq_image(self.ground_truth.ground_truth(image_id), prediction, self.categories,
                                            f"image {image_id}")
            if self.output_dir is not None:
                file_name = f"{image_id:012d}.png"
                png = Image.fromarray(id2rgb(prediction.id_map))
                replace_atomic(self.output_dir / file_name, lambda tmp, png=png: png.save(tmp, format="PNG"),
                               what="panoptic prediction")
                self.predictions[image_id] = {"image_id": image_id, "file_name": file_name,
                                              "segments_info": list(prediction.segments)}

    def synchronize_between_processes(self) -> None:
        """Gather every process's per-image statistics (``all_gather_object``) when torch.distributed is initialised."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.stats, self.predictions, self.dropped))
        self.stats, self.predictions, self.dropped = {}, {}, 0
        for stats, predictions, dropped in gathered:
            for image_id, stat in stats.items():
                self.stats.setdefault(image_id, stat)
            for image_id, prediction in predictions.items():
                self.predictions.setdefault(image_id, prediction)
            self.dropped += dropped

    def summarize(self) -> PQResult:
        """PQ over the images seen; writes ``predictions.json`` when writing predictions."""
        total = PQStat()
        for image_id in sorted(self.stats):  # one order for any number of processes: the same float sums
            total += self.stats[image_id]
        if self.dropped:
            log.warning("panoptic evaluation: %d predicted segment(s) of classes that are not categories of the data "
                        "were left out (their pixels count as unlabelled)", self.dropped)
        if self.output_dir is not None and self.predictions:
            content = {"annotations": [self.predictions[i] for i in sorted(self.predictions)]}
            text = json.dumps(content).encode()
            write_atomic(self.output_dir / PREDICTIONS_FILE, lambda f: f.write(text), what="panoptic predictions")
        return total.result(self.categories, num_images=len(self.stats))


# ----------------------------------------------------------------------------------------------
# Prediction files
# ----------------------------------------------------------------------------------------------
def read_panoptic_predictions(path: str | Path) -> dict[int, dict[str, Any]]:
    """A COCO panoptic predictions file (``{"annotations": [...]}`` or the bare list) → image id → annotation.

    Raises:
        MissingFileError: the file does not exist.
        CocoFormatError: not JSON, or an entry without ``image_id``, ``file_name`` or a valid ``segments_info``
            (segments with integer ``id`` and ``category_id``), or two entries for one image.
    """
    content = load_json(path, "results file")
    annotations = content.get("annotations") if isinstance(content, dict) else content
    if not isinstance(annotations, list):
        raise CocoFormatError(f"results file {path}: expected COCO panoptic predictions (an object with an "
                              f"'annotations' list, or that list), got {short(content)}")
    by_image: dict[int, dict[str, Any]] = {}
    for i, ann in enumerate(annotations):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or not is_int(ann.get("image_id")):
            raise CocoFormatError(f"{where}: needs an integer 'image_id', got {short(ann)}")
        if not isinstance(ann.get("file_name"), str) or not ann["file_name"]:
            raise CocoFormatError(f"{where} (image {ann['image_id']}): 'file_name' (its PNG) must be a non-empty string")
        segments = ann.get("segments_info")
        if not isinstance(segments, list) or not all(
                isinstance(s, dict) and is_int(s.get("id")) and is_int(s.get("category_id")) for s in segments):
            raise CocoFormatError(f"{where} (image {ann['image_id']}): 'segments_info' must be a list of objects with "
                                  f"integer 'id' and 'category_id', got {short(segments)}")
        if ann["image_id"] in by_image:
            raise CocoFormatError(f"{where}: a second prediction for image {ann['image_id']}")
        by_image[ann["image_id"]] = ann
    return by_image


def evaluate_panoptic_files(
    ann_file: str | Path,
    results_file: str | Path,
    gt_png_dir: str | Path | None = None,
    results_png_dir: str | Path | None = None,
) -> PQResult:
    """PQ of COCO panoptic predictions (JSON + PNGs) against a COCO panoptic ground truth (JSON + PNGs), no model.

    The predicted PNG folder defaults to the JSON file's path without ``.json`` (as panopticapi); the ground
    truth's to the dataset layout rule (:func:`~torchdetr.data.layout.panoptic_png_dir_for`: that path first, then
    e.g. the generic layout's ``panoptic/``). Every image of the
    ground truth's annotations is scored and must have a prediction; predictions of other images are refused.

    Raises:
        MissingFileError: a file or folder is missing (named).
        DataError: the first problem of the inputs, naming the file, image and segment (see :func:`pq_image`).
    """
    ann_file, results_file = Path(ann_file), Path(results_file)
    for what, path in (("annotation file", ann_file), ("results file", results_file)):
        if not path.is_file():
            raise MissingFileError(f"{what} not found: {path}")
    if gt_png_dir is None:  # the dataset layout rule (its first candidate is panopticapi's rule)
        gt_png_dir = panoptic_png_dir_for(ann_file) or ann_file.with_suffix("")
    gt_png_dir = Path(gt_png_dir)
    results_png_dir = Path(results_png_dir) if results_png_dir is not None else results_file.with_suffix("")
    for what, folder in (("--gt_png_dir", gt_png_dir), ("--results_png_dir", results_png_dir)):
        if not folder.is_dir():
            raise MissingFileError(f"{what}: folder of segment PNGs not found: {folder}")
    content, validation = load_panoptic_json(ann_file)
    categories = panoptic_categories([c for c in content["categories"] if c.get("id") in validation.isthing])
    predictions = read_panoptic_predictions(results_file)
    extra = sorted(set(predictions) - set(validation.annotations))
    if extra:
        raise DataError(f"{results_file}: predictions for image id(s) {short(extra)} that have no ground truth in {ann_file}")
    total = PQStat()
    for image_id, gt_ann in validation.annotations.items():
        if image_id not in predictions:
            raise DataError(f"{results_file}: no prediction for image {image_id} ({gt_ann['file_name']})")
        info, pred_ann = validation.images[image_id], predictions[image_id]
        size = (info["width"], info["height"])
        gt_map = load_segment_ids(gt_png_dir / gt_ann["file_name"], size)
        pred_map = load_segment_ids(results_png_dir / pred_ann["file_name"])
        total += pq_image(PanopticImage(gt_map, gt_ann["segments_info"]), PanopticImage(pred_map, pred_ann["segments_info"]),
                          categories, f"image {image_id} ({results_png_dir / pred_ann['file_name']})")
    return total.result(categories, num_images=len(validation.annotations))
