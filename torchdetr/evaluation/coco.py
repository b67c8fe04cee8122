"""COCO evaluation: box/mask AP exactly as pycocotools computes it, and per-class AP.

Data flow::

    predictions {image_id: {"scores", "labels", "boxes", "masks"}}   (tensors, xyxy pixels)
        ─► COCO results (``evaluation.results``)
        ─► one pycocotools ``COCOeval`` per IoU type over all evaluated images
        ─► the 12 standard stats · per-class AP · the ``eval`` dict (PR curves)

Nothing here re-implements matching or accumulation: every number comes from ``COCOeval`` (or,
when asked, from ``faster_coco_eval``'s drop-in ``COCOeval_faster``). What this module adds is
the case of "no detections at all" (on which ``COCO.loadRes`` crashes), per-class AP, and the
evaluator that collects a dataset's predictions (also across processes).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from ..atomic_write import write_atomic
from ..categories import category_names_from_coco
from ..errors import MissingExtraError
from .checks import CocoFormatError, check_backend, check_iou_type, quiet, resolve_backend
from .ground_truth import validate_coco_gt
from .results import predictions_to_coco_results
from .tables import NUM_STATS

logger = logging.getLogger(__name__)

# The "all" area range and maxDets=100 of COCOeval's default parameters: where per-class AP is read.
_AREA_ALL = "all"
_MAX_DETS = 100


class PerClassAP(TypedDict):
    """AP of one category; ``None`` where the category has no ground truth in the evaluated images."""

    category_id: int
    name: str
    AP: float | None  # IoU .50:.95, area all, maxDets 100
    AP50: float | None
    AP75: float | None
    num_gt: int  # non-crowd ground-truth instances in the evaluated images


def load_results(coco_gt: Any, dets: list[dict[str, Any]], coco_cls: type = COCO) -> Any:
    """``coco_gt.loadRes(dets)``, also for no detections (``loadRes`` crashes on an empty list).

    ``coco_cls``: the ground truth's class (pycocotools' ``COCO`` or faster_coco_eval's), for the empty results.
    """
    if dets:
        return coco_gt.loadRes(dets)
    dt = coco_cls()
    dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with quiet():
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
    ``backend="faster_coco_eval"`` (what ``auto`` picks when it is installed; stats equal to 1e-12, the
    order of float64 sums) the returned object is a ``faster_coco_eval`` ``COCOeval_faster``, whose ``eval``
    dict has the same layout. ``coco_gt``'s annotations gain the keys COCOeval adds
    (``ignore``; RLE ``segmentation`` for segm), as with pycocotools itself.
    """
    check_iou_type(iou_type)
    backend = resolve_backend(backend)
    img_ids = sorted({int(i) for i in img_ids})
    dets = [dict(r) for r in results]  # loadRes writes id/area/iscrowd into the dicts it gets
    if iou_type == "segm":
        for d in dets:  # as detectron2 does: area (small/medium/large) from the mask, not the box
            d.pop("bbox", None)
    buffer = io.StringIO()
    if backend == "faster_coco_eval":
        try:
            import faster_coco_eval
        except ModuleNotFoundError:
            raise MissingExtraError(
                "backend 'faster_coco_eval' needs the faster-coco-eval package: pip install 'torchdetr[eval]'"
            ) from None
        gt = faster_coco_eval.COCO(copy.deepcopy(coco_gt.dataset))
        dt = load_results(gt, dets, faster_coco_eval.COCO)

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
        with quiet():
            dt = load_results(coco_gt, dets)
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
            check_iou_type(iou_type)
        check_backend(backend)
        for iou_type in iou_types:
            validate_coco_gt(coco_gt.dataset, "ground truth", iou_type)
        # COCOeval writes into the ground-truth annotations ("ignore", RLE segmentation): keep ours private.
        self.coco_gt: COCO = copy.deepcopy(coco_gt)
        self.iou_types: tuple[str, ...] = tuple(iou_types)
        self.backend = backend
        self.category_names: dict[int, str] = (
            {int(k): str(v) for k, v in category_names.items()} if category_names is not None
            else category_names_from_coco(self.coco_gt.dataset["categories"])
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
        """Write :meth:`results` as a COCO results JSON file, atomically (a failure leaves the previous file
        and no partial one; ``OutputError`` names the file); returns the path."""
        content = json.dumps(self.results(iou_type)).encode()
        return write_atomic(path, lambda f: f.write(content), what="detections")

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
        The file is replaced atomically, like :meth:`write_results`.
        """
        evaluation = eval_to_dict(self._coco_eval(iou_type), self.category_names)
        return write_atomic(path, lambda f: torch.save(evaluation, f), what="evaluation arrays")

    def _store(self, iou_type: str) -> dict[int, list[dict[str, Any]]]:
        check_iou_type(iou_type)
        if iou_type not in self._results:
            raise ValueError(f"iou_type {iou_type!r} is not evaluated here (iou_types={list(self.iou_types)})")
        return self._results[iou_type]

    def _coco_eval(self, iou_type: str) -> COCOeval:
        self._store(iou_type)
        if iou_type not in self.coco_eval:
            self.accumulate()
        return self.coco_eval[iou_type]
