"""COCO evaluation glue: box/mask AP exactly as pycocotools computes it, per-class AP, results files.

Data flow::

    predictions {image_id: {"scores", "labels", "boxes", "masks"}}   (tensors, xyxy pixels)
        ─► COCO results: [{"image_id", "category_id", "bbox" (xywh) | "segmentation" (RLE), "score"}]
        ─► one pycocotools ``COCOeval`` per IoU type over all evaluated images
        ─► the 12 standard stats · per-class AP · the ``eval`` dict (PR curves)

Nothing here re-implements matching or accumulation: every number comes from ``COCOeval`` (or,
when asked, from ``faster_coco_eval``'s drop-in ``COCOeval_faster``). What this module adds is
the conversion from tensors, input validation with messages that name the offending entry, the
case of "no detections at all" (on which ``COCO.loadRes`` crashes), and tables to print.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

logger = logging.getLogger(__name__)

IOU_TYPES: tuple[str, ...] = ("bbox", "segm")
BACKENDS: tuple[str, ...] = ("pycocotools", "faster_coco_eval")

# The 12 numbers of ``COCOeval.stats`` for boxes and masks, in order.
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
STAT_DESCRIPTIONS: dict[str, str] = {
    "AP": "AP at IoU=.50:.05:.95 (primary challenge metric)",
    "AP50": "AP at IoU=.50 (PASCAL VOC metric)",
    "AP75": "AP at IoU=.75 (strict metric)",
    "APs": "AP for small objects: area < 32²",
    "APm": "AP for medium objects: 32² < area < 96²",
    "APl": "AP for large objects: area > 96²",
    "AR1": "AR given 1 detection per image",
    "AR10": "AR given 10 detections per image",
    "AR100": "AR given 100 detections per image",
    "ARs": "AR for small objects: area < 32²",
    "ARm": "AR for medium objects: 32² < area < 96²",
    "ARl": "AR for large objects: area > 96²",
}
NUM_STATS = len(STAT_NAMES)

# Index of the "all" area range and of maxDets=100 in COCOeval's default parameters.
_AREA_ALL = "all"
_MAX_DETS = 100


class CocoFormatError(ValueError):
    """A ground-truth or results file (or prediction dict) that COCO evaluation cannot use."""


class PerClassAP(TypedDict):
    """AP of one category; ``None`` where the category has no ground truth in the evaluated images."""

    category_id: int
    name: str
    AP: float | None  # IoU .50:.95, area all, maxDets 100
    AP50: float | None
    AP75: float | None
    num_gt: int  # non-crowd ground-truth instances in the evaluated images


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


# ---------------------------------------------------------------------------------------------
# Tensors → COCO results
# ---------------------------------------------------------------------------------------------


def boxes_to_coco_results(image_id: int, scores: Tensor, labels: Tensor, boxes: Tensor) -> list[dict[str, Any]]:
    """COCO box results of one image.

    ``scores`` [N], ``labels`` [N] (category ids), ``boxes`` [N, 4] as (x1, y1, x2, y2) pixels.
    Returns N dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
    """
    boxes = boxes.detach().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    return [
        {"image_id": image_id, "category_id": label, "bbox": box, "score": score}
        for label, box, score in zip(labels.detach().cpu().tolist(), xywh, scores.detach().cpu().tolist())
    ]


def encode_masks(masks: Tensor) -> list[dict[str, Any]]:
    """Compressed RLEs (``{"size": [H, W], "counts": str}``) of binary masks [N, 1, H, W] or [N, H, W].

    Values above 0.5 are foreground (uint8 0/1 or 0/255, bool and probabilities all work).
    """
    masks = masks.detach().cpu()
    if masks.dim() == 4:
        masks = masks[:, 0]
    binary = (masks > 0.5).numpy().astype(np.uint8)  # [N, H, W]
    rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # expects [H, W, N]
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def predictions_to_coco_results(
    predictions: Mapping[int, Mapping[str, Tensor]], iou_type: str, image_sizes: Mapping[int, tuple[int, int]] | None = None
) -> dict[int, list[dict[str, Any]]]:
    """Convert model predictions to COCO results, per image.

    ``predictions``: image id → ``scores`` [N], ``labels`` [N] (category ids), ``boxes`` [N, 4] (x1, y1, x2, y2
    pixels of the original image) and, for ``iou_type="segm"``, ``masks`` [N, 1, H, W]. ``image_sizes``
    (image id → (H, W)), when given, is checked against the mask size. Segm results carry no ``bbox``
    (as in the original DETR), so pycocotools derives box and area from the mask.
    """
    _check_iou_type(iou_type)
    out: dict[int, list[dict[str, Any]]] = {}
    for key, pred in predictions.items():
        image_id = int(key)
        where = f"predictions for image {image_id}"
        for name in ("scores", "labels", "boxes") + (("masks",) if iou_type == "segm" else ()):
            if name not in pred:
                extra = " (needed for iou_type 'segm')" if name == "masks" else ""
                raise CocoFormatError(f"{where} have no {name!r}{extra}; keys: {sorted(pred)}")
        scores, labels, boxes = pred["scores"], pred["labels"], pred["boxes"]
        n = scores.shape[0] if scores.dim() == 1 else -1
        if n < 0 or labels.shape != (n,) or boxes.shape != (n, 4):
            raise CocoFormatError(
                f"{where}: expected scores [N], labels [N], boxes [N, 4], got {tuple(scores.shape)}, "
                f"{tuple(labels.shape)}, {tuple(boxes.shape)}"
            )
        if labels.is_floating_point():
            raise CocoFormatError(f"{where}: labels must be integer category ids, got dtype {labels.dtype}")
        if iou_type == "bbox":
            out[image_id] = boxes_to_coco_results(image_id, scores, labels, boxes)
            continue
        masks = pred["masks"]
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3 or masks.shape[0] != n:
            raise CocoFormatError(f"{where}: expected masks [N, 1, H, W] with N = {n}, got {tuple(pred['masks'].shape)}")
        size = (int(masks.shape[1]), int(masks.shape[2]))
        if image_sizes is not None and image_id in image_sizes and size != tuple(image_sizes[image_id]):
            raise CocoFormatError(
                f"{where}: masks are {size[0]}x{size[1]} (HxW) but the ground-truth image is "
                f"{image_sizes[image_id][0]}x{image_sizes[image_id][1]}; masks must be at the original image size"
            )
        rles = encode_masks(masks) if n else []
        out[image_id] = [
            {"image_id": image_id, "category_id": label, "segmentation": rle, "score": score}
            for label, rle, score in zip(labels.detach().cpu().tolist(), rles, scores.detach().cpu().tolist())
        ]
    return out


# ---------------------------------------------------------------------------------------------
# Running COCOeval
# ---------------------------------------------------------------------------------------------


def _check_iou_type(iou_type: str) -> None:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {list(IOU_TYPES)}, got {iou_type!r}")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


def _quiet() -> contextlib.AbstractContextManager:
    """Swallow pycocotools' progress prints ("Loading and preparing results...", ...)."""
    return contextlib.redirect_stdout(io.StringIO())


def _empty_results(coco_gt: Any, coco_cls: type) -> Any:
    """A results object with no detections (``COCO.loadRes`` crashes on an empty list)."""
    dt = coco_cls()
    dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with _quiet():
        dt.createIndex()
    return dt


def run_coco_eval(
    coco_gt: COCO, results: Sequence[Mapping[str, Any]], iou_type: str, img_ids: Iterable[int],
    backend: str = "pycocotools",
) -> tuple[COCOeval, str]:
    """Evaluate ``results`` (COCO results format) on the images ``img_ids`` in one ``COCOeval``.

    Runs ``evaluate()``, ``accumulate()`` and ``summarize()`` quietly and returns the ``COCOeval`` (the 12
    stats in ``.stats``, PR data in ``.eval``) with the summary pycocotools would have printed. Images in
    ``img_ids`` without results count as images with no detections. ``results`` are not modified. With
    ``backend="faster_coco_eval"`` the returned object is a ``faster_coco_eval`` ``COCOeval_faster``,
    whose ``eval`` dict has the same layout. ``coco_gt``'s annotations gain the keys COCOeval adds
    (``ignore``; RLE ``segmentation`` for segm), as with pycocotools itself.
    """
    _check_iou_type(iou_type)
    _check_backend(backend)
    img_ids = sorted({int(i) for i in img_ids})
    dets = [dict(r) for r in results]  # loadRes writes id/area/iscrowd into the dicts it gets
    if iou_type == "segm":
        for d in dets:  # as detectron2 does: area (small/medium/large) from the mask, not the box
            d.pop("bbox", None)
    buffer = io.StringIO()
    if backend == "faster_coco_eval":
        try:
            import faster_coco_eval
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "backend 'faster_coco_eval' needs the faster-coco-eval package: pip install faster-coco-eval"
            ) from err
        gt = faster_coco_eval.COCO(copy.deepcopy(coco_gt.dataset))
        dt = gt.loadRes(dets) if dets else _empty_results(gt, faster_coco_eval.COCO)

        def _print(*args: object) -> None:
            print(*args, file=buffer)

        coco_eval = faster_coco_eval.COCOeval_faster(gt, dt, iou_type, print_function=lambda *a: None)
        coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.print_function = _print
        coco_eval.summarize()
        coco_eval.stats = np.asarray(coco_eval.stats[:NUM_STATS])
    else:
        with _quiet():
            dt = coco_gt.loadRes(dets) if dets else _empty_results(coco_gt, COCO)
            coco_eval = COCOeval(coco_gt, dt, iouType=iou_type)
            coco_eval.params.imgIds = img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
        with contextlib.redirect_stdout(buffer):
            coco_eval.summarize()
    return coco_eval, buffer.getvalue()


def count_gt_instances(coco_gt: COCO, img_ids: Iterable[int]) -> dict[int, int]:
    """Number of non-crowd ground-truth annotations per category id in the images ``img_ids``.

    These are the instances COCOeval scores in area "all" (crowd regions are ignored). Every
    category of ``coco_gt`` is a key, with 0 where it has no instance.
    """
    counts = dict.fromkeys(coco_gt.getCatIds(), 0)
    for image_id in set(img_ids):
        for ann in coco_gt.imgToAnns.get(image_id, []):
            if not ann.get("iscrowd", 0) and ann["category_id"] in counts:
                counts[ann["category_id"]] += 1
    return counts


def per_class_ap_from_eval(
    coco_eval: COCOeval, category_names: Mapping[int, str], num_gt: Mapping[int, int]
) -> list[PerClassAP]:
    """AP, AP50 and AP75 of every category of an accumulated COCOeval.

    Reads ``coco_eval.eval["precision"]`` [T, R, K, A, M] at area "all" and maxDets 100 and averages the
    entries > -1 (what ``COCOeval.summarize`` does for all categories together). A category without
    ground truth in the evaluated images (all entries -1) gets ``None``.
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"]
    a = list(params.areaRngLbl).index(_AREA_ALL)
    m = list(params.maxDets).index(_MAX_DETS)
    iou_thrs = np.asarray(params.iouThrs)

    def mean_valid(p: np.ndarray) -> float | None:
        valid = p[p > -1]
        return float(np.mean(valid)) if valid.size else None

    rows: list[PerClassAP] = []
    for k, cat_id in enumerate(params.catIds):
        p = precision[:, :, k, a, m]  # [T, R]
        rows.append(PerClassAP(
            category_id=int(cat_id),
            name=str(category_names.get(int(cat_id), cat_id)),
            AP=mean_valid(p),
            AP50=mean_valid(p[np.isclose(iou_thrs, 0.5)]),
            AP75=mean_valid(p[np.isclose(iou_thrs, 0.75)]),
            num_gt=int(num_gt.get(int(cat_id), 0)),
        ))
    return rows


def eval_to_dict(coco_eval: COCOeval, category_names: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The accumulated ``coco_eval.eval`` as plain tensors and lists (loadable with ``weights_only=True``).

    Format (T IoU thresholds, R recall thresholds, K categories, A area ranges, M maxDets)::

        {
          "iou_type": "bbox" | "segm",
          "precision": float64 tensor [T, R, K, A, M]   (-1 where a category has no ground truth),
          "recall":    float64 tensor [T, K, A, M]      (-1 likewise),
          "scores":    float64 tensor [T, R, K, A, M]   (score at each recall threshold),
          "counts":    [T, R, K, A, M] as a list of ints,
          "date":      str,
          "params": {"iouType", "imgIds", "catIds", "iouThrs", "recThrs", "maxDets",
                     "areaRng" ([[min, max], ...]), "areaRngLbl", "useCats"} as plain lists/str/int,
          "category_names": {category id: name},
        }

    The keys of ``params`` are the attribute names of pycocotools' ``Params``, so code written for
    the original ``eval/latest.pth`` reads ``data["params"]["recThrs"]`` where it read ``.recThrs``.
    """
    ev = coco_eval.eval
    p = coco_eval.params
    names = category_names if category_names is not None else {}

    def as_list(v: Any) -> Any:
        return np.asarray(v).tolist()

    return {
        "iou_type": str(p.iouType),
        "precision": torch.from_numpy(np.array(ev["precision"], dtype=np.float64)),
        "recall": torch.from_numpy(np.array(ev["recall"], dtype=np.float64)),
        "scores": torch.from_numpy(np.array(ev["scores"], dtype=np.float64)),
        "counts": [int(c) for c in ev["counts"]],
        "date": str(ev.get("date", "")),
        "params": {
            "iouType": str(p.iouType),
            "imgIds": [int(i) for i in p.imgIds],
            "catIds": [int(c) for c in p.catIds],
            "iouThrs": [float(t) for t in as_list(p.iouThrs)],
            "recThrs": [float(t) for t in as_list(p.recThrs)],
            "maxDets": [int(d) for d in p.maxDets],
            "areaRng": [[float(lo), float(hi)] for lo, hi in p.areaRng],
            "areaRngLbl": [str(label) for label in p.areaRngLbl],
            "useCats": int(p.useCats),
        },
        "category_names": {int(c): str(names.get(int(c), c)) for c in p.catIds},
    }


# ---------------------------------------------------------------------------------------------
# The evaluator used by the evaluation loop
# ---------------------------------------------------------------------------------------------


class CocoEvaluator:
    """Collects predictions over a dataset and evaluates them with pycocotools' COCOeval.

    Usage (the original DETR's ``engine.evaluate``)::

        evaluator = CocoEvaluator(dataset.coco, ("bbox",))
        for batch ...:
            evaluator.update({image_id: {"scores": [N], "labels": [N], "boxes": [N, 4]}, ...})
        evaluator.synchronize_between_processes()
        evaluator.accumulate()
        stats = evaluator.summarize()["bbox"]          # the 12 COCO numbers
        evaluator.save_eval(output_dir / "eval" / "latest.pth")

    All results of an IoU type are evaluated in one ``COCOeval`` whose ``params.imgIds`` are the
    images given to :meth:`update` (with or without detections), so the numbers are exactly those of
    pycocotools on the same results. An image given twice (e.g. the padding of a DistributedSampler)
    counts once, with its first predictions. After :meth:`accumulate`, ``coco_eval[iou_type]`` is the
    ``COCOeval`` object.
    """

    def __init__(
        self,
        coco_gt: COCO,
        iou_types: Sequence[str] = ("bbox",),
        category_names: Mapping[int, str] | None = None,
        backend: str = "pycocotools",
    ) -> None:
        if isinstance(iou_types, str):
            iou_types = (iou_types,)
        for iou_type in iou_types:
            _check_iou_type(iou_type)
        _check_backend(backend)
        for iou_type in iou_types:
            validate_coco_gt(coco_gt.dataset, "ground truth", iou_type)
        # COCOeval writes into the ground-truth annotations ("ignore", RLE segmentation): keep ours private.
        self.coco_gt: COCO = copy.deepcopy(coco_gt)
        self.iou_types: tuple[str, ...] = tuple(iou_types)
        self.backend = backend
        self.category_names: dict[int, str] = (
            {int(k): str(v) for k, v in category_names.items()} if category_names is not None
            else {int(c["id"]): str(c.get("name", c["id"])) for c in self.coco_gt.dataset["categories"]}
        )
        self._image_sizes = {
            int(img["id"]): (int(img["height"]), int(img["width"]))
            for img in self.coco_gt.dataset["images"] if "height" in img and "width" in img
        }
        self._results: dict[str, dict[int, list[dict[str, Any]]]] = {t: {} for t in self.iou_types}
        self.coco_eval: dict[str, COCOeval] = {}
        self._summaries: dict[str, str] = {}

    @property
    def img_ids(self) -> list[int]:
        """Sorted ids of the images evaluated so far."""
        return sorted(self._results[self.iou_types[0]]) if self.iou_types else []

    def update(self, predictions: Mapping[int, Mapping[str, Tensor]]) -> None:
        """Add the predictions of some images.

        ``predictions``: image id → ``scores`` [N], ``labels`` [N] (category ids), ``boxes`` [N, 4]
        (x1, y1, x2, y2 pixels of the original image) and, for segm, ``masks`` [N, 1, H, W] (uint8 or
        bool, original image size). N may be 0: the image is still evaluated (its ground truth counts
        as missed).
        """
        unknown = [int(k) for k in predictions if int(k) not in self.coco_gt.imgs]
        if unknown:
            raise CocoFormatError(
                f"predictions for image id(s) {unknown[:10]} that are not in the ground truth "
                f"({len(self.coco_gt.imgs)} images)"
            )
        for iou_type in self.iou_types:
            converted = predictions_to_coco_results(predictions, iou_type, self._image_sizes)
            store = self._results[iou_type]
            for image_id, dets in converted.items():
                store.setdefault(image_id, dets)
        self.coco_eval = {}

    def synchronize_between_processes(self) -> None:
        """Gather every process's results (``all_gather_object``) when torch.distributed is initialised."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self._results)
        merged: dict[str, dict[int, list[dict[str, Any]]]] = {t: {} for t in self.iou_types}
        for part in gathered:
            for iou_type in self.iou_types:
                for image_id, dets in part[iou_type].items():
                    merged[iou_type].setdefault(int(image_id), dets)
        self._results = merged
        self.coco_eval = {}

    def results(self, iou_type: str = "bbox") -> list[dict[str, Any]]:
        """COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h] or ``segmentation`` RLE,
        ``score``), ordered by image id then as predicted."""
        store = self._store(iou_type)
        return [dict(d) for image_id in sorted(store) for d in store[image_id]]

    def write_results(self, path: str | Path, iou_type: str = "bbox") -> Path:
        """Write :meth:`results` as a COCO results JSON file; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            json.dump(self.results(iou_type), f)
        return path

    def accumulate(self) -> None:
        """Evaluate and accumulate each IoU type over all the images given so far."""
        if not self.img_ids:
            logger.warning("COCO evaluation over no images: update() was never given predictions")
        for iou_type in self.iou_types:
            self.coco_eval[iou_type], self._summaries[iou_type] = run_coco_eval(
                self.coco_gt, self.results(iou_type), iou_type, self.img_ids, self.backend
            )

    def summarize(self, print_summary: bool = False) -> dict[str, list[float]]:
        """IoU type → the 12 COCOeval stats (order of :data:`STAT_NAMES`; -1 where there is no ground truth).

        With ``print_summary``, prints pycocotools' standard summary for each IoU type.
        """
        if set(self.coco_eval) != set(self.iou_types):
            self.accumulate()
        out: dict[str, list[float]] = {}
        for iou_type in self.iou_types:
            coco_eval = self.coco_eval[iou_type]
            if print_summary:
                print(f"IoU metric: {iou_type}")
                print(self._summaries[iou_type], end="")
            out[iou_type] = [float(s) for s in coco_eval.stats]
        return out

    def per_class_ap(self, iou_type: str = "bbox") -> list[PerClassAP]:
        """AP (IoU .50:.95), AP50, AP75 and ground-truth count of every category (``None``: no ground truth)."""
        return per_class_ap_from_eval(
            self._coco_eval(iou_type), self.category_names, count_gt_instances(self.coco_gt, self.img_ids)
        )

    def save_eval(self, path: str | Path, iou_type: str = "bbox") -> Path:
        """Save the accumulated evaluation (precision/recall/scores, params) with ``torch.save``.

        The format is that of :func:`eval_to_dict`; load it with ``torch.load(path, weights_only=True)``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(eval_to_dict(self._coco_eval(iou_type), self.category_names), path)
        return path

    def _store(self, iou_type: str) -> dict[int, list[dict[str, Any]]]:
        _check_iou_type(iou_type)
        if iou_type not in self._results:
            raise ValueError(f"iou_type {iou_type!r} is not evaluated here (iou_types={list(self.iou_types)})")
        return self._results[iou_type]

    def _coco_eval(self, iou_type: str) -> COCOeval:
        self._store(iou_type)
        if iou_type not in self.coco_eval:
            self.accumulate()
        return self.coco_eval[iou_type]


# ---------------------------------------------------------------------------------------------
# Validating ground-truth and results files
# ---------------------------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _short(v: object, limit: int = 80) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_box(box: object, where: str) -> list[float]:
    if not isinstance(box, list | tuple) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise CocoFormatError(f"{where}: 'bbox' must be 4 finite numbers [x, y, width, height], got {_short(box)}")
    if box[2] < 0 or box[3] < 0:
        raise CocoFormatError(f"{where}: 'bbox' {_short(box)} has a negative width or height")
    return [float(v) for v in box]


def _load_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise CocoFormatError(f"{what} {path} is a directory, expected a JSON file")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise CocoFormatError(f"{what} {path} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise CocoFormatError(f"{what} {path} is not a text JSON file: {err}") from None


def _check_unique_ids(items: list, key: str, source: str) -> set[int]:
    ids: set[int] = set()
    for i, item in enumerate(items):
        where = f"{source}: {key}[{i}]"
        if not isinstance(item, dict):
            raise CocoFormatError(f"{where} is a {type(item).__name__}, expected an object")
        if "id" not in item:
            raise CocoFormatError(f"{where} has no 'id' (keys: {sorted(item)})")
        if not _is_int(item["id"]):
            raise CocoFormatError(f"{where}: 'id' must be an integer, got {_short(item['id'])}")
        if item["id"] in ids:
            raise CocoFormatError(f"{where}: duplicate id {item['id']}")
        ids.add(item["id"])
    return ids


def validate_coco_gt(dataset: object, source: str = "ground truth", iou_type: str = "bbox") -> None:
    """Check that a COCO annotation dict can be evaluated; raise :class:`CocoFormatError` naming the fault.

    Needs ``images`` (unique integer ids; ``height``/``width`` for segm), ``categories`` (unique ids) and
    ``annotations`` (unique ids, known ``image_id``/``category_id``, ``area``, ``bbox`` [x, y, w, h],
    ``segmentation`` for segm).
    """
    _check_iou_type(iou_type)
    if not isinstance(dataset, dict):
        raise CocoFormatError(f"{source}: expected a COCO annotation object (a dict), got {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise CocoFormatError(f"{source}: not a COCO annotation file: no {key!r} (keys: {sorted(dataset)})")
        if not isinstance(dataset[key], list):
            raise CocoFormatError(f"{source}: {key!r} must be a list, got {type(dataset[key]).__name__}")
    image_ids = _check_unique_ids(dataset["images"], "images", source)
    category_ids = _check_unique_ids(dataset["categories"], "categories", source)
    _check_unique_ids(dataset["annotations"], "annotations", source)
    if iou_type == "segm":
        for i, img in enumerate(dataset["images"]):
            for key in ("height", "width"):
                if not _is_int(img.get(key)) or img[key] <= 0:
                    raise CocoFormatError(
                        f"{source}: images[{i}] (id {img['id']}): {key!r} must be a positive integer for mask "
                        f"evaluation, got {_short(img.get(key))}"
                    )
    for i, ann in enumerate(dataset["annotations"]):
        where = f"{source}: annotations[{i}] (id {ann['id']})"
        for key in ("image_id", "category_id", "area") + (("bbox",) if iou_type == "bbox" else ("segmentation",)):
            if key not in ann:
                raise CocoFormatError(f"{where} has no {key!r} (keys: {sorted(ann)})")
        if not _is_int(ann["image_id"]) or ann["image_id"] not in image_ids:
            raise CocoFormatError(f"{where}: image_id {_short(ann['image_id'])} is not in 'images'")
        if not _is_int(ann["category_id"]) or ann["category_id"] not in category_ids:
            raise CocoFormatError(f"{where}: category_id {_short(ann['category_id'])} is not in 'categories'")
        if not _is_number(ann["area"]) or ann["area"] < 0:
            raise CocoFormatError(f"{where}: 'area' must be a finite number >= 0, got {_short(ann['area'])}")
        if "bbox" in ann:
            _check_box(ann["bbox"], where)


def load_coco_gt(ann_file: str | Path, iou_type: str = "bbox") -> COCO:
    """Read and validate a COCO annotation file; returns a pycocotools ``COCO``."""
    dataset = _load_json(ann_file, "annotation file")
    validate_coco_gt(dataset, str(ann_file), iou_type)
    coco = COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def _check_segmentation(seg: object, size: tuple[int, int] | None, where: str) -> dict[str, Any]:
    """A results ``segmentation`` (RLE, uncompressed RLE or polygons) as a compressed RLE with str counts."""
    try:
        if isinstance(seg, dict):
            if "size" not in seg or "counts" not in seg:
                raise CocoFormatError(f"{where}: an RLE 'segmentation' needs 'size' and 'counts', got keys {sorted(seg)}")
            rle_size = seg["size"]
            if not (isinstance(rle_size, list | tuple) and len(rle_size) == 2 and all(_is_int(v) for v in rle_size)):
                raise CocoFormatError(f"{where}: RLE 'size' must be [height, width], got {_short(rle_size)}")
            if size is not None and tuple(rle_size) != size:
                raise CocoFormatError(
                    f"{where}: RLE size {list(rle_size)} differs from the image's [height, width] {list(size)}"
                )
            if isinstance(seg["counts"], list):  # uncompressed RLE
                rle = mask_util.frPyObjects(seg, rle_size[0], rle_size[1])
            elif isinstance(seg["counts"], str | bytes):
                rle = {"size": list(rle_size), "counts": seg["counts"]}
                mask_util.area(rle)  # raises on malformed counts
            else:
                raise CocoFormatError(f"{where}: RLE 'counts' must be a string or a list, got {type(seg['counts']).__name__}")
        elif isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
            if size is None:
                raise CocoFormatError(f"{where}: polygon 'segmentation' needs the image's height and width")
            for poly in seg:
                if len(poly) < 6 or len(poly) % 2 or not all(_is_number(v) for v in poly):
                    raise CocoFormatError(f"{where}: a polygon must be >= 3 (x, y) pairs of numbers, got {_short(poly)}")
            rle = mask_util.merge(mask_util.frPyObjects(seg, size[0], size[1]))
        else:
            raise CocoFormatError(
                f"{where}: 'segmentation' must be an RLE {{'size', 'counts'}} or a list of polygons, got {_short(seg)}"
            )
    except CocoFormatError:
        raise
    except Exception as err:  # pycocotools' C code raises bare exceptions on malformed input
        raise CocoFormatError(f"{where}: invalid 'segmentation' {_short(seg)}: {err}") from None
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}


def validate_results(
    results: object, coco_gt: COCO, iou_type: str = "bbox", source: str = "results",
    ignore_unknown_categories: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Check COCO results against ``coco_gt``; raise :class:`CocoFormatError` naming the first bad entry.

    Each entry needs ``image_id`` (an image of ``coco_gt``), ``category_id`` (a category of ``coco_gt``),
    a finite ``score`` and, for bbox, ``bbox`` [x, y, w, h] (finite, w and h >= 0) or, for segm,
    ``segmentation`` (compressed or uncompressed RLE at the image size, or polygons). Returns fresh
    entries with only those keys (segmentations as compressed RLE) and the number of entries skipped
    for an unknown category (only when ``ignore_unknown_categories``; COCOeval would ignore them too).
    """
    _check_iou_type(iou_type)
    if not isinstance(results, list):
        hint = ""
        if isinstance(results, dict) and "annotations" in results:
            hint = " (this looks like a COCO annotation file; a results file is a list of detections)"
        raise CocoFormatError(
            f"{source}: expected a JSON list of detections [{{'image_id', 'category_id', '{iou_type}', 'score'}}, ...], "
            f"got a {type(results).__name__}{hint}"
        )
    image_ids = set(coco_gt.imgs)
    category_ids = set(coco_gt.cats)
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    required = ("image_id", "category_id", geometry, "score")
    clean: list[dict[str, Any]] = []
    ignored = 0
    for i, det in enumerate(results):
        where = f"{source}: entry {i}"
        if not isinstance(det, dict):
            raise CocoFormatError(f"{where} is a {type(det).__name__}, expected an object with keys {list(required)}")
        missing = [k for k in required if k not in det]
        if missing:
            hint = ""
            if geometry in missing and iou_type == "bbox" and "segmentation" in det:
                hint = "; for mask results use iou_type 'segm'"
            raise CocoFormatError(f"{where} has no {missing} (keys: {sorted(det)}){hint}")
        image_id, category_id, score = det["image_id"], det["category_id"], det["score"]
        if not _is_int(image_id):
            raise CocoFormatError(f"{where}: 'image_id' must be an integer, got {_short(image_id)}")
        if image_id not in image_ids:
            raise CocoFormatError(f"{where}: image_id {image_id} is not an image of the ground truth")
        if not _is_int(category_id):
            raise CocoFormatError(f"{where}: 'category_id' must be an integer, got {_short(category_id)}")
        if category_id not in category_ids:
            if ignore_unknown_categories:
                ignored += 1
                continue
            known = sorted(category_ids)
            shown = known if len(known) <= 20 else [*known[:20], "..."]
            raise CocoFormatError(f"{where}: category_id {category_id} is not a category of the ground truth {shown}")
        if not _is_number(score):
            raise CocoFormatError(f"{where}: 'score' must be a finite number, got {_short(score)}")
        entry: dict[str, Any] = {"image_id": image_id, "category_id": category_id, "score": float(score)}
        if iou_type == "bbox":
            entry["bbox"] = _check_box(det["bbox"], where)
        else:
            img = coco_gt.imgs[image_id]
            size = (img["height"], img["width"]) if "height" in img and "width" in img else None
            entry["segmentation"] = _check_segmentation(det["segmentation"], size, where)
        clean.append(entry)
    return clean, ignored


def evaluate_results_file(
    ann_file: str | Path, results_file: str | Path, iou_type: str = "bbox", backend: str = "pycocotools",
    ignore_unknown_categories: bool = False,
) -> EvalReport:
    """Evaluate a COCO results file against a COCO annotation file, without a model.

    Every image of the annotation file is evaluated (images without detections count as missed), as
    with pycocotools' defaults. For segm, a ``bbox`` in the results is ignored: areas come from the
    masks. Raises :class:`CocoFormatError` (a ValueError) or FileNotFoundError with a message naming
    the file, entry and field at fault.
    """
    _check_iou_type(iou_type)
    _check_backend(backend)
    coco_gt = load_coco_gt(ann_file, iou_type)
    raw = _load_json(results_file, "results file")
    results, ignored = validate_results(raw, coco_gt, iou_type, str(results_file), ignore_unknown_categories)
    img_ids = sorted(coco_gt.imgs)
    coco_eval, summary = run_coco_eval(coco_gt, results, iou_type, img_ids, backend)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in coco_gt.dataset["categories"]}
    return EvalReport(
        iou_type=iou_type,
        stats=[float(s) for s in coco_eval.stats],
        per_class=per_class_ap_from_eval(coco_eval, names, count_gt_instances(coco_gt, img_ids)),
        num_images=len(img_ids),
        num_detections=len(results),
        num_ignored=ignored,
        summary=summary,
    )


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _check_stats(stats: Sequence[float]) -> None:
    if len(stats) != NUM_STATS:
        raise ValueError(f"expected the {NUM_STATS} COCOeval stats, got {len(stats)} values")


def stats_dict(stats: Sequence[float]) -> dict[str, float]:
    """``{"AP": ..., "AP50": ..., ...}`` from the 12 COCOeval stats (values unchanged; -1: no ground truth)."""
    _check_stats(stats)
    return {name: float(v) for name, v in zip(STAT_NAMES, stats)}


def _fmt(value: float | None) -> str:
    """A score to 3 decimals; '-' where it is undefined (None, or COCO's -1 for "no ground truth")."""
    if value is None or value < 0 or not math.isfinite(value):
        return "-"
    return f"{value:.3f}"


def format_stats_table(stats: Sequence[float], title: str = "bbox") -> str:
    """The 12 COCO stats as a fixed-width table: name, value (3 decimals, '-' for -1) and description."""
    _check_stats(stats)
    lines = [f"IoU metric: {title}", f"{'metric':<7} {'value':>6}  description"]
    lines += [f"{name:<7} {_fmt(v):>6}  {STAT_DESCRIPTIONS[name]}" for name, v in zip(STAT_NAMES, stats)]
    return "\n".join(lines)


def format_per_class_table(rows: Sequence[PerClassAP] | Sequence[Mapping[str, Any]]) -> str:
    """Per-category AP as a fixed-width table (id, name, AP, AP50, AP75, #GT); '-' where undefined."""
    name_width = max([len("category"), *(len(str(r["name"])) for r in rows)])
    id_width = max([len("id"), *(len(str(r["category_id"])) for r in rows)])
    header = f"{'id':>{id_width}}  {'category':<{name_width}}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}  {'#GT':>6}"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['category_id']:>{id_width}}  {r['name']!s:<{name_width}}  {_fmt(r['AP']):>6}  "
            f"{_fmt(r['AP50']):>6}  {_fmt(r['AP75']):>6}  {r['num_gt']:>6}"
        )
    return "\n".join(lines)
