"""faster-coco-eval (``detr eval``'s default backend when installed) gives pycocotools' 12 stats, on real and synthetic sets.

The oracle is pycocotools' own ``COCOeval`` run directly on the same files; detections are the ground
truth disturbed with seeded noise (moved boxes, wrong classes, duplicates, misses and false positives),
so that every stat is away from 0 and 1. "Identical" is to 1e-12: the two sum the same float64 terms
in another order (the last bit of AP differs on some sets).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from torchdetr.evaluation.checks import resolve_backend
from torchdetr.evaluation.results_file import evaluate_results_file

from .conftest import DATA, package_missing, require

needs_faster = pytest.mark.skipif(package_missing("faster_coco_eval"),
                                  reason="faster-coco-eval not installed")
KEEP, WRONG_CLASS, DUPLICATE, FALSE_POSITIVES_PER_IMAGE, JITTER = 0.85, 0.1, 0.1, 2, 0.15


def noisy_detections(gt: dict, seed: int, with_masks: bool = False) -> list[dict]:
    """Seeded detections from the ground truth ``gt`` (COCO dict); with ``with_masks`` each has a ``segmentation``."""
    rng = np.random.default_rng(seed)
    images = {im["id"]: im for im in gt["images"]}
    category_ids = [c["id"] for c in gt["categories"]]
    detections = []

    def add(image_id: int, category_id: int, box: list[float]) -> None:
        image = images[image_id]
        x, y = np.clip(box[:2], 0, [image["width"] - 2, image["height"] - 2])
        w, h = np.clip(box[2:], 1, [image["width"] - x, image["height"] - y])
        entry = {"image_id": image_id, "category_id": int(category_id), "bbox": [float(v) for v in (x, y, w, h)],
                 "score": float(rng.uniform(0.05, 1))}
        if with_masks:
            mask = np.zeros((image["height"], image["width"]), np.uint8, order="F")
            mask[int(y):int(y + h), int(x):int(x + w)] = 1
            rle = mask_util.encode(mask)
            entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        detections.append(entry)

    for ann in gt["annotations"]:
        if rng.random() > KEEP:
            continue
        x, y, w, h = ann["bbox"]
        box = [x + rng.normal(0, JITTER) * w, y + rng.normal(0, JITTER) * h, w * rng.lognormal(0, JITTER),
               h * rng.lognormal(0, JITTER)]
        category = rng.choice(category_ids) if rng.random() < WRONG_CLASS else ann["category_id"]
        add(ann["image_id"], category, box)
        if rng.random() < DUPLICATE:
            add(ann["image_id"], category, [v + rng.normal(0, 2) for v in box])
    for image in gt["images"]:
        for _ in range(FALSE_POSITIVES_PER_IMAGE):
            w, h = rng.uniform(4, image["width"] / 3), rng.uniform(4, image["height"] / 3)
            add(image["id"], rng.choice(category_ids), [rng.uniform(0, image["width"] - w),
                                                       rng.uniform(0, image["height"] - h), w, h])
    return detections


def pycocotools_stats(ann_file: Path, results_file: Path, iou_type: str) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        coco_eval = COCOeval(gt, gt.loadRes(str(results_file)), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return [float(s) for s in coco_eval.stats]


def _write(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


@needs_faster
def test_auto_backend_is_faster_coco_eval_when_installed():
    assert resolve_backend("auto") == "faster_coco_eval"
    assert resolve_backend("pycocotools") == "pycocotools"


@needs_faster
@pytest.mark.parametrize("split", ["val", "test"])
def test_identical_stats_on_bccd(split, tmp_path):
    ann_file = require(DATA / "bccd" / "annotations" / f"instances_{split}.json")
    results = _write(tmp_path / "dets.json", noisy_detections(json.loads(ann_file.read_text()), seed=7))
    expected = pycocotools_stats(ann_file, results, "bbox")
    assert 0.05 < expected[0] < 0.95
    for backend in ("faster_coco_eval", "auto"):
        report = evaluate_results_file(ann_file, results, backend=backend)
        assert report.stats == pytest.approx(expected, abs=1e-12), backend


@needs_faster
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_identical_stats_on_synthetic(iou_type, tmp_path):
    from torchdetr.data.synthetic import write_coco_folder

    folder = write_coco_folder(tmp_path / "synthetic", num_train=1, num_val=12, seed=3, image_size=96)
    ann_file = folder / "annotations" / "instances_val.json"
    gt = json.loads(ann_file.read_text())
    results = _write(tmp_path / "dets.json", noisy_detections(gt, seed=11, with_masks=iou_type == "segm"))
    expected = pycocotools_stats(ann_file, results, iou_type)
    assert 0.01 < expected[0] < 0.95
    report = evaluate_results_file(ann_file, results, iou_type=iou_type, backend="auto")  # detr eval's default
    assert report.stats == pytest.approx(expected, abs=1e-12)
