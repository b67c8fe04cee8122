"""COCO evaluation glue: every number is checked against pycocotools itself or a closed form."""

from __future__ import annotations

import copy
import errno
import json
import os
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from torchdetr.errors import OutputError
from torchdetr.evaluation.checks import CocoFormatError
from torchdetr.evaluation.coco import CocoEvaluator
from torchdetr.evaluation.results_file import evaluate_results_file
from torchdetr.evaluation.tables import STAT_DESCRIPTIONS, STAT_NAMES, format_per_class_table, format_stats_table, stats_dict

from .conftest import package_missing
from .test_atomic_write import file_size_limit

IOU_THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]
H, W = 120, 160  # every test image has this size


# ---------------------------------------------------------------------------------------------
# Hand-made ground truth and detections
# ---------------------------------------------------------------------------------------------


def _box_mask(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y : y + h, x : x + w] = 1
    return m


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def make_gt() -> dict:
    """4 images, categories 1..3 (3 has no instance), boxes of all sizes, one crowd region.

    Boxes have integer coordinates; the segmentation of each annotation is its filled box as an RLE.
    """
    boxes = {  # image id → [(category, x, y, w, h, iscrowd)]
        1: [(1, 10, 10, 40, 30, 0), (2, 60, 20, 90, 90, 0), (1, 5, 80, 8, 8, 0)],
        2: [(1, 20, 20, 50, 50, 0), (1, 100, 10, 40, 60, 0), (2, 0, 0, 160, 120, 1)],
        3: [(2, 30, 30, 100, 80, 0)],
        4: [],
    }
    anns, ann_id = [], 1
    for image_id, items in boxes.items():
        for cat, x, y, w, h, crowd in items:
            anns.append({"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": crowd, "segmentation": _rle(_box_mask(x, y, w, h))})
            ann_id += 1
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in boxes],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}],
        "annotations": anns,
    }


def make_detections() -> list[dict]:
    """Detections with exact (quarter-pixel) coordinates: hits, near misses, false positives, a wrong class."""
    rng = np.random.default_rng(0)
    dets = []
    for ann in make_gt()["annotations"]:
        if ann["iscrowd"]:
            continue
        x, y, w, h = ann["bbox"]
        for _ in range(2):
            dx, dy, dw, dh = (rng.integers(-12, 13, size=4) / 4).tolist()
            box = [x + dx, y + dy, max(w + dw, 1.0), max(h + dh, 1.0)]
            dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box,
                         "score": round(float(rng.uniform(0.05, 1)), 4)})
    dets += [
        {"image_id": 1, "category_id": 2, "bbox": [0.0, 0.0, 30.0, 30.0], "score": 0.7},  # false positive
        {"image_id": 3, "category_id": 1, "bbox": [30.0, 30.0, 100.0, 80.0], "score": 0.6},  # wrong class
        {"image_id": 4, "category_id": 3, "bbox": [5.0, 5.0, 20.0, 20.0], "score": 0.5},  # no GT of class 3
        {"image_id": 2, "category_id": 2, "bbox": [10.0, 10.0, 100.0, 100.0], "score": 0.9},  # on the crowd
    ]
    return dets


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def pycocotools_eval(ann_file: Path, dets: list[dict], iou_type: str = "bbox", img_ids=None, cat_ids=None) -> COCOeval:
    """The oracle: pycocotools exactly as its README shows, on a results JSON."""
    gt = COCO(str(ann_file))
    dt = gt.loadRes(copy.deepcopy(dets))
    ev = COCOeval(gt, dt, iouType=iou_type)
    if img_ids is not None:
        ev.params.imgIds = img_ids
    if cat_ids is not None:
        ev.params.catIds = cat_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def as_predictions(dets: list[dict], image_ids: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    """COCO results (xywh) → the evaluator's input (tensors, xyxy); every image of ``image_ids`` included."""
    preds = {}
    for image_id in image_ids:
        mine = [d for d in dets if d["image_id"] == image_id]
        xywh = torch.tensor([d["bbox"] for d in mine], dtype=torch.float32).reshape(-1, 4)
        preds[image_id] = {
            "scores": torch.tensor([d["score"] for d in mine], dtype=torch.float32),
            "labels": torch.tensor([d["category_id"] for d in mine], dtype=torch.int64),
            "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
        }
    return preds


def float32_scores(dets: list[dict]) -> list[dict]:
    """The same detections with scores rounded to float32, as they come out of a tensor."""
    return [{**d, "score": float(np.float32(d["score"]))} for d in dets]


@pytest.fixture
def gt_file(tmp_path: Path) -> Path:
    return write_json(tmp_path / "gt.json", make_gt())


@pytest.fixture
def coco_gt(gt_file: Path) -> COCO:
    return COCO(str(gt_file))


# ---------------------------------------------------------------------------------------------
# AP values
# ---------------------------------------------------------------------------------------------


def test_perfect_detections_give_ap_one(gt_file: Path, coco_gt: COCO, tmp_path: Path) -> None:
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in make_gt()["annotations"] if not a["iscrowd"]]
    report = evaluate_results_file(gt_file, write_json(tmp_path / "dets.json", perfect))
    assert report.stats[:4] == pytest.approx([1.0, 1.0, 1.0, 1.0])  # AP, AP50, AP75, APs
    evaluator = CocoEvaluator(coco_gt)
    evaluator.update(as_predictions(perfect, [1, 2, 3, 4]))
    assert evaluator.summarize()["bbox"][0] == pytest.approx(1.0)
    assert [r["AP"] for r in evaluator.per_class_ap()] == [pytest.approx(1.0), pytest.approx(1.0), None]


@pytest.mark.parametrize("dx", [0, 5, 10, 20, 30, 40])
def test_shifted_single_box_closed_form(dx: int, tmp_path: Path) -> None:
    # One 100x100 box and one detection shifted right by dx: IoU = (100 - dx) / (100 + dx).
    # A single matched detection has precision 1, so AP = fraction of IoU thresholds with IoU >= t.
    gt = {"images": [{"id": 7, "height": 200, "width": 200}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [50, 50, 100, 100],
                           "area": 10000, "iscrowd": 0}]}
    iou = (100 - dx) / (100 + dx)
    expected_ap = sum(iou >= t for t in IOU_THRESHOLDS) / len(IOU_THRESHOLDS)
    det = [{"image_id": 7, "category_id": 1, "bbox": [50.0 + dx, 50.0, 100.0, 100.0], "score": 0.9}]
    report = evaluate_results_file(write_json(tmp_path / "gt.json", gt), write_json(tmp_path / "d.json", det))
    stats = stats_dict(report.stats)
    assert stats["AP"] == pytest.approx(expected_ap)
    assert stats["AP50"] == pytest.approx(1.0 if iou >= 0.5 else 0.0)
    assert stats["AP75"] == pytest.approx(1.0 if iou >= 0.75 else 0.0)
    assert stats["APm"] == -1 and stats["APs"] == -1  # 100x100 is "large"
    assert stats["APl"] == pytest.approx(expected_ap)


def test_results_file_equals_pycocotools(gt_file: Path, tmp_path: Path) -> None:
    dets = make_detections()
    report = evaluate_results_file(gt_file, write_json(tmp_path / "dets.json", dets))
    oracle = pycocotools_eval(gt_file, dets)
    assert report.stats == oracle.stats.tolist()
    assert 0 < report.stats[0] < 1  # a non-trivial case
    assert report.num_images == 4 and report.num_detections == len(dets)
    assert report.summary.count("Average Precision") == 6


def test_evaluator_equals_pycocotools(gt_file: Path, coco_gt: COCO) -> None:
    dets = float32_scores(make_detections())
    evaluator = CocoEvaluator(coco_gt)
    evaluator.update(as_predictions(dets, [1, 2]))  # in two batches
    evaluator.update(as_predictions(dets, [3, 4]))
    stats = evaluator.summarize()["bbox"]
    assert stats == pycocotools_eval(gt_file, dets).stats.tolist()
    assert evaluator.img_ids == [1, 2, 3, 4]
    assert evaluator.coco_eval["bbox"].stats.tolist() == stats


def test_images_without_detections_are_evaluated(gt_file: Path, coco_gt: COCO) -> None:
    dets = float32_scores([d for d in make_detections() if d["image_id"] in (1, 3)])
    only_1 = CocoEvaluator(coco_gt)
    only_1.update(as_predictions(dets, [1]))
    with_2 = CocoEvaluator(coco_gt)
    with_2.update(as_predictions(dets, [1, 2]))  # image 2: no detections, its GT counts as missed
    stats_1, stats_2 = only_1.summarize()["bbox"], with_2.summarize()["bbox"]
    dets_1 = [d for d in dets if d["image_id"] == 1]
    assert stats_1 == pycocotools_eval(gt_file, dets_1, img_ids=[1]).stats.tolist()
    assert stats_2 == pycocotools_eval(gt_file, dets_1, img_ids=[1, 2]).stats.tolist()
    assert stats_2[8] < stats_1[8]  # AR100 drops: more ground truth, no more detections


def test_duplicate_image_counts_once(gt_file: Path, coco_gt: COCO) -> None:
    dets = float32_scores(make_detections())
    evaluator = CocoEvaluator(coco_gt)
    evaluator.update(as_predictions(dets, [1, 2, 3, 4]))
    evaluator.update(as_predictions(dets, [1]))  # e.g. DistributedSampler padding
    assert evaluator.summarize()["bbox"] == pycocotools_eval(gt_file, dets).stats.tolist()
    assert len(evaluator.results()) == len(dets)


def test_per_class_ap_equals_single_category_cocoeval(gt_file: Path, coco_gt: COCO) -> None:
    dets = float32_scores(make_detections())
    evaluator = CocoEvaluator(coco_gt)
    evaluator.update(as_predictions(dets, [1, 2, 3, 4]))
    rows = evaluator.per_class_ap()
    assert [(r["category_id"], r["name"]) for r in rows] == [(1, "cat"), (2, "dog"), (3, "bird")]
    gt_anns = make_gt()["annotations"]
    for row in rows:
        cat = row["category_id"]
        assert row["num_gt"] == sum(a["category_id"] == cat and not a["iscrowd"] for a in gt_anns)
        oracle = pycocotools_eval(gt_file, dets, cat_ids=[cat]).stats
        if row["num_gt"] == 0:
            assert oracle[0] == -1
            assert row["AP"] is row["AP50"] is row["AP75"] is None
        else:
            assert [row["AP"], row["AP50"], row["AP75"]] == pytest.approx(oracle[:3].tolist(), abs=1e-12)
    assert rows[0]["AP"] != rows[1]["AP"]


def test_segm_with_masks_closed_form_and_pycocotools(gt_file: Path, coco_gt: COCO) -> None:
    # Image 3 holds one 100x80 "dog" at (30, 30). Predicted: the same mask shifted right by 10 pixels
    # (IoU = 90*80 / (110*80) = 9/11) and, on image 1, exact masks of all its objects.
    shifted = _box_mask(40, 30, 100, 80)
    gt_1 = [a for a in make_gt()["annotations"] if a["image_id"] == 1]
    masks_1 = [mask_util.decode(a["segmentation"]) for a in gt_1]
    preds = {
        3: {"scores": torch.tensor([0.8]), "labels": torch.tensor([2]), "boxes": torch.tensor([[40.0, 30, 140, 110]]),
            "masks": torch.from_numpy(shifted)[None, None]},
        1: {"scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([a["category_id"] for a in gt_1]),
            "boxes": torch.zeros(3, 4), "masks": torch.from_numpy(np.stack(masks_1))[:, None]},
    }
    evaluator = CocoEvaluator(coco_gt, ("bbox", "segm"))
    evaluator.update(preds)
    segm = evaluator.summarize()["segm"]
    dets = [{"image_id": 3, "category_id": 2, "segmentation": _rle(shifted), "score": 0.8}]
    dets += [{"image_id": 1, "category_id": a["category_id"], "segmentation": a["segmentation"], "score": s}
             for a, s in zip(gt_1, [0.9, 0.8, 0.7])]
    dets = float32_scores(dets)
    assert segm == pycocotools_eval(gt_file, dets, "segm", img_ids=[1, 3]).stats.tolist()
    # Closed form for "dog" alone on image 3: the only detection matches at thresholds <= 9/11.
    only_3 = CocoEvaluator(coco_gt, ("segm",))
    only_3.update({3: preds[3]})
    row = only_3.per_class_ap("segm")[1]
    assert row["AP"] == pytest.approx(sum(9 / 11 >= t for t in IOU_THRESHOLDS) / 10)
    assert (row["AP50"], row["AP75"]) == pytest.approx((1.0, 1.0))
    # Results carry RLE masks, no boxes (the original DETR's format)
    first = evaluator.results("segm")[0]
    assert set(first) == {"image_id", "category_id", "segmentation", "score"}
    assert (mask_util.decode(first["segmentation"]) == masks_1[0]).all()


def test_no_detections_at_all(gt_file: Path, coco_gt: COCO, tmp_path: Path) -> None:
    # Closed form: with no detections, AP = AR = 0 for every area range that has (non-crowd)
    # ground truth, and -1 (COCO's "undefined") for ranges without any.
    areas = [a["area"] for a in make_gt()["annotations"] if not a["iscrowd"]]
    has = {"s": any(a < 32**2 for a in areas), "m": any(32**2 <= a < 96**2 for a in areas),
           "l": any(a >= 96**2 for a in areas)}
    expected = [0.0] * 3 + [0.0 if has[k] else -1.0 for k in "sml"] + [0.0] * 3 + [0.0 if has[k] else -1.0 for k in "sml"]
    assert -1.0 in expected or all(has.values())

    evaluator = CocoEvaluator(coco_gt, ("bbox", "segm"))
    empty = {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4),
             "masks": torch.zeros(0, 1, H, W, dtype=torch.uint8)}
    evaluator.update({i: empty for i in (1, 2, 3, 4)})
    stats = evaluator.summarize()
    assert stats["bbox"] == expected and stats["segm"] == expected
    assert [r["AP"] for r in evaluator.per_class_ap()] == [0.0, 0.0, None]

    report = evaluate_results_file(gt_file, write_json(tmp_path / "empty.json", []))
    assert report.stats == expected and report.num_detections == 0

    never_updated = CocoEvaluator(coco_gt)
    assert never_updated.summarize()["bbox"] == [-1.0] * 12


def test_write_results_round_trip(gt_file: Path, coco_gt: COCO, tmp_path: Path) -> None:
    dets = make_detections()
    evaluator = CocoEvaluator(coco_gt)
    evaluator.update(as_predictions(dets, [1, 2, 3, 4]))
    path = evaluator.write_results(tmp_path / "out" / "bbox.json")
    written = json.loads(path.read_text())
    assert len(written) == len(dets)
    assert set(written[0]) == {"image_id", "category_id", "bbox", "score"}
    assert evaluate_results_file(gt_file, path).stats == evaluator.summarize()["bbox"]


def test_a_failed_write_keeps_the_earlier_results_and_eval_files_and_leaves_no_partial_file(
        coco_gt: COCO, tmp_path: Path) -> None:
    """A real kernel refusal (EFBIG past RLIMIT_FSIZE) while writing: the earlier files stay, whole."""
    few, many = CocoEvaluator(coco_gt), CocoEvaluator(coco_gt)
    dets = make_detections()
    few.update(as_predictions(dets[:1], [1]))
    many.update(as_predictions(dets * 50, [1, 2, 3, 4]))
    out = tmp_path / "out"
    results, arrays = few.write_results(out / "bbox.json"), few.save_eval(out / "latest.pth")
    earlier = {path: path.read_bytes() for path in (results, arrays)}
    many.accumulate()
    limit = len(earlier[results]) + 1024  # room for the earlier results, not the new ones nor the arrays (~290 kB)
    assert len(json.dumps(many.results("bbox"))) > limit
    with file_size_limit(limit):
        with pytest.raises(OutputError, match=rf"bbox\.json: could not write the detections: {os.strerror(errno.EFBIG)}"):
            many.write_results(results)
        with pytest.raises(OutputError, match=r"latest\.pth: could not write the evaluation arrays"):
            many.save_eval(arrays)
    assert {path: path.read_bytes() for path in (results, arrays)} == earlier
    assert sorted(p.name for p in out.iterdir()) == ["bbox.json", "latest.pth"]


def test_segm_round_trip(gt_file: Path, coco_gt: COCO, tmp_path: Path) -> None:
    masks = torch.from_numpy(np.stack([_box_mask(20, 22, 48, 50), _box_mask(0, 0, 10, 10)]))[:, None]
    evaluator = CocoEvaluator(coco_gt, ("segm",))
    evaluator.update({2: {"scores": torch.tensor([0.9, 0.3]), "labels": torch.tensor([1, 1]),
                          "boxes": torch.zeros(2, 4), "masks": masks}})
    path = evaluator.write_results(tmp_path / "segm.json", "segm")
    report = evaluate_results_file(gt_file, path, "segm")
    # the file covers all 4 GT images, the evaluator only image 2: compare to pycocotools on the file
    oracle = pycocotools_eval(gt_file, json.loads(path.read_text()), "segm")
    assert report.stats == oracle.stats.tolist()
    assert report.stats[0] > 0


def test_segm_area_comes_from_the_mask_not_the_bbox(gt_file: Path, tmp_path: Path) -> None:
    # Image 1's small 8x8 cat, found exactly, plus a confident false positive whose mask is small
    # (6x6) but whose bbox is large. Area ranges must use the mask area (as detectron2 does), so the
    # false positive lowers APs; pycocotools' loadRes would take the bbox area if a bbox were present.
    small = _box_mask(5, 80, 8, 8)
    dets = [{"image_id": 1, "category_id": 1, "segmentation": _rle(_box_mask(130, 100, 6, 6)), "score": 0.9,
             "bbox": [0.0, 0.0, 100.0, 100.0]},
            {"image_id": 1, "category_id": 1, "segmentation": _rle(small), "score": 0.5, "bbox": [5.0, 80.0, 8.0, 8.0]}]
    report = evaluate_results_file(gt_file, write_json(tmp_path / "d.json", dets), "segm")
    without_bbox = [{k: v for k, v in d.items() if k != "bbox"} for d in dets]
    assert report.stats == pycocotools_eval(gt_file, without_bbox, "segm").stats.tolist()
    assert stats_dict(report.stats)["APs"] < pycocotools_eval(gt_file, dets, "segm").stats[3]


def test_unknown_categories_can_be_ignored(gt_file: Path, tmp_path: Path) -> None:
    dets = [*make_detections(), {"image_id": 1, "category_id": 99, "bbox": [1.0, 1.0, 5.0, 5.0], "score": 0.99}]
    path = write_json(tmp_path / "dets.json", dets)
    with pytest.raises(CocoFormatError, match=rf"entry {len(dets) - 1}: category_id 99 is not a category"):
        evaluate_results_file(gt_file, path)
    report = evaluate_results_file(gt_file, path, ignore_unknown_categories=True)
    assert report.num_ignored == 1 and report.num_detections == len(dets) - 1
    assert report.stats == pycocotools_eval(gt_file, dets).stats.tolist()  # pycocotools ignores them too


def test_save_eval_loads_with_weights_only(gt_file: Path, coco_gt: COCO, tmp_path: Path) -> None:
    dets = float32_scores(make_detections())
    evaluator = CocoEvaluator(coco_gt)
    evaluator.update(as_predictions(dets, [1, 2, 3, 4]))
    path = evaluator.save_eval(tmp_path / "eval" / "latest.pth")
    data = torch.load(path, weights_only=True)
    oracle = pycocotools_eval(gt_file, dets)
    for key in ("precision", "recall", "scores"):
        assert isinstance(data[key], torch.Tensor)
        np.testing.assert_array_equal(data[key].numpy(), oracle.eval[key])
    assert data["precision"].shape == (10, 101, 3, 4, 3)
    params = data["params"]
    np.testing.assert_allclose(params["recThrs"], oracle.params.recThrs)
    np.testing.assert_allclose(params["iouThrs"], oracle.params.iouThrs)
    assert params["catIds"] == [1, 2, 3] and params["imgIds"] == [1, 2, 3, 4]
    assert params["maxDets"] == [1, 10, 100] and params["areaRngLbl"] == ["all", "small", "medium", "large"]
    assert data["category_names"] == {1: "cat", 2: "dog", 3: "bird"} and data["iou_type"] == "bbox"


@pytest.mark.skipif(package_missing("faster_coco_eval"), reason="faster-coco-eval not installed")
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_coco_eval_backend_matches(gt_file: Path, coco_gt: COCO, iou_type: str, tmp_path: Path) -> None:
    dets = float32_scores(make_detections())
    preds = as_predictions(dets, [1, 2, 3, 4])
    for pred in preds.values():  # masks = filled boxes, at the image size
        boxes = pred["boxes"].round().int().tolist()
        pred["masks"] = torch.from_numpy(np.stack(
            [_box_mask(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes] or np.zeros((0, H, W), np.uint8)
        ))[:, None]
    stats, rows = {}, {}
    for backend in ("pycocotools", "faster_coco_eval"):
        evaluator = CocoEvaluator(coco_gt, (iou_type,), backend=backend)
        evaluator.update(preds)
        stats[backend] = evaluator.summarize()[iou_type]
        rows[backend] = evaluator.per_class_ap(iou_type)
    assert stats["faster_coco_eval"] == pytest.approx(stats["pycocotools"], abs=1e-12)
    assert rows["faster_coco_eval"] == rows["pycocotools"]
    assert stats["pycocotools"][0] > 0
    empty = write_json(tmp_path / "empty.json", [])
    assert evaluate_results_file(gt_file, empty, backend="faster_coco_eval").stats == \
        evaluate_results_file(gt_file, empty).stats


def _distributed_worker(rank: int, world_size: int, init_file: str, gt_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dets = float32_scores(make_detections())
        evaluator = CocoEvaluator(COCO(gt_file))
        # rank 0: images 1, 3; rank 1: images 2, 4 and image 1 again (sampler padding)
        evaluator.update(as_predictions(dets, [1, 3] if rank == 0 else [2, 4, 1]))
        evaluator.synchronize_between_processes()
        stats = evaluator.summarize()["bbox"]
        if rank == 0:
            Path(out_file).write_text(json.dumps({"stats": stats, "img_ids": evaluator.img_ids}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_synchronize_between_processes(gt_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    args = (2, str(tmp_path / "init"), str(gt_file), str(out))
    mp.start_processes(_distributed_worker, args=args, nprocs=2, start_method="fork")  # fork: no re-import
    result = json.loads(out.read_text())
    assert result["img_ids"] == [1, 2, 3, 4]
    assert result["stats"] == pycocotools_eval(gt_file, float32_scores(make_detections())).stats.tolist()


def test_synchronize_is_a_no_op_without_distributed(coco_gt: COCO) -> None:
    evaluator = CocoEvaluator(coco_gt)
    evaluator.update(as_predictions(make_detections(), [1]))
    evaluator.synchronize_between_processes()
    assert evaluator.img_ids == [1]


# ---------------------------------------------------------------------------------------------
# Bad input: clear messages naming the entry and field
# ---------------------------------------------------------------------------------------------

GOOD = {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}


@pytest.mark.parametrize(("results", "message"), [
    ({"annotations": []}, r"expected a JSON list of detections.*looks like a COCO annotation file"),
    ("hello", r"expected a JSON list"),
    ([GOOD, [1, 2]], r"entry 1 is a list"),
    ([GOOD, {"image_id": 1, "category_id": 1, "score": 0.5}], r"entry 1 has no \['bbox'\]"),
    ([GOOD, {**GOOD, "image_id": 42}], r"entry 1: image_id 42 is not an image of the ground truth"),
    ([GOOD, {**GOOD, "image_id": "1"}], r"entry 1: 'image_id' must be an integer, got '1'"),
    ([GOOD, {**GOOD, "category_id": 7}], r"entry 1: category_id 7 is not a category of the ground truth \[1, 2, 3\]"),
    ([GOOD, {**GOOD, "score": float("nan")}], r"entry 1: 'score' must be a finite number, got nan"),
    ([GOOD, {**GOOD, "score": None}], r"entry 1: 'score' must be a finite number, got None"),
    ([GOOD, {**GOOD, "bbox": [1.0, 2.0, -3.0, 4.0]}], r"entry 1: 'bbox' \[1.0, 2.0, -3.0, 4.0\] has a negative width"),
    ([GOOD, {**GOOD, "bbox": [1.0, 2.0, 3.0]}], r"entry 1: 'bbox' must be 4 finite numbers"),
    ([GOOD, {**GOOD, "bbox": [1.0, float("inf"), 3.0, 4.0]}], r"entry 1: 'bbox' must be 4 finite numbers"),
])
def test_results_file_validation(gt_file: Path, tmp_path: Path, results: object, message: str) -> None:
    path = write_json(tmp_path / "bad.json", results)
    with pytest.raises(CocoFormatError, match=message) as err:
        evaluate_results_file(gt_file, path)
    assert "bad.json" in str(err.value)


@pytest.mark.parametrize(("segmentation", "message"), [
    ({"size": [10, 10], "counts": "PPYo"}, r"entry 0: RLE size \[10, 10\] differs from the image's \[height, width\] \[120"),
    ({"counts": "abc"}, r"entry 0: an RLE 'segmentation' needs 'size' and 'counts'"),
    ([[1.0, 2.0]], r"entry 0: a polygon must be >= 3 \(x, y\) pairs"),
    ("oops", r"entry 0: 'segmentation' must be an RLE"),
])
def test_segm_results_validation(gt_file: Path, tmp_path: Path, segmentation: object, message: str) -> None:
    det = {"image_id": 1, "category_id": 1, "segmentation": segmentation, "score": 0.5}
    with pytest.raises(CocoFormatError, match=message):
        evaluate_results_file(gt_file, write_json(tmp_path / "bad.json", [det]), "segm")


def test_segm_results_accept_polygons_and_uncompressed_rle(gt_file: Path, tmp_path: Path) -> None:
    poly = [[20.0, 20.0, 70.0, 20.0, 70.0, 70.0, 20.0, 70.0]]
    mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(poly, H, W)))
    flat = mask.flatten(order="F")  # uncompressed RLE: alternating run lengths, starting with zeros
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    dets = [{"image_id": 2, "category_id": 1, "segmentation": poly, "score": 0.9},
            {"image_id": 2, "category_id": 1, "segmentation": {"size": [H, W], "counts": counts}, "score": 0.8}]
    report = evaluate_results_file(gt_file, write_json(tmp_path / "d.json", dets), "segm")
    oracle_dets = [{**d, "segmentation": _rle(mask)} for d in dets]
    assert report.stats == pycocotools_eval(gt_file, oracle_dets, "segm").stats.tolist()


def test_bbox_eval_of_mask_results_hints_at_segm(gt_file: Path, tmp_path: Path) -> None:
    det = {"image_id": 1, "category_id": 1, "segmentation": _rle(_box_mask(0, 0, 5, 5)), "score": 0.5}
    with pytest.raises(CocoFormatError, match="use iou_type 'segm'"):
        evaluate_results_file(gt_file, write_json(tmp_path / "d.json", [det]))


def _gt_with(change) -> dict:
    gt = make_gt()
    change(gt)
    return gt


@pytest.mark.parametrize(("gt", "message"), [
    ([], r"expected a COCO annotation object"),
    ({"images": [], "categories": []}, r"no 'annotations'"),
    (_gt_with(lambda g: g["images"].append({"id": 1})), r"images\[4\]: duplicate id 1"),
    (_gt_with(lambda g: g["annotations"][2].pop("area")), r"annotations\[2\] \(id 3\) has no 'area'"),
    (_gt_with(lambda g: g["annotations"][0].update(image_id=99)), r"annotations\[0\] \(id 1\): image_id 99 is not in 'images'"),
    (_gt_with(lambda g: g["annotations"][1].update(category_id=9)), r"annotations\[1\] \(id 2\): category_id 9 is not in"),
    (_gt_with(lambda g: g["annotations"][1].update(bbox=[0, 0, -1, 3])), r"annotations\[1\] \(id 2\): 'bbox' .* negative"),
    (_gt_with(lambda g: g["categories"][0].pop("id")), r"categories\[0\] has no 'id'"),
])
def test_gt_file_validation(tmp_path: Path, gt: object, message: str) -> None:
    gt_path = write_json(tmp_path / "gt.json", gt)
    with pytest.raises(CocoFormatError, match=message) as err:
        evaluate_results_file(gt_path, write_json(tmp_path / "d.json", [GOOD]))
    assert "gt.json" in str(err.value)


def test_missing_and_unreadable_files(gt_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"annotation file not found: .*nope\.json"):
        evaluate_results_file(tmp_path / "nope.json", gt_file)
    with pytest.raises(FileNotFoundError, match="results file not found"):
        evaluate_results_file(gt_file, tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(CocoFormatError, match=r"results file .*broken\.json is not valid JSON"):
        evaluate_results_file(gt_file, tmp_path / "broken.json")


def test_segm_gt_needs_image_size(tmp_path: Path) -> None:
    gt = _gt_with(lambda g: g["images"][1].pop("height"))
    gt_path = write_json(tmp_path / "gt.json", gt)
    with pytest.raises(CocoFormatError, match=r"images\[1\] \(id 2\): 'height' must be a positive integer"):
        evaluate_results_file(gt_path, write_json(tmp_path / "d.json", []), "segm")
    assert evaluate_results_file(gt_path, write_json(tmp_path / "d.json", [])).num_images == 4  # fine for bbox


def test_update_validation(coco_gt: COCO) -> None:
    evaluator = CocoEvaluator(coco_gt, ("bbox", "segm"))
    ok = {"scores": torch.ones(2), "labels": torch.ones(2, dtype=torch.int64), "boxes": torch.zeros(2, 4)}
    with pytest.raises(CocoFormatError, match=r"image id\(s\) \[42\] that are not in the ground truth"):
        evaluator.update({42: ok})
    with pytest.raises(CocoFormatError, match="predictions for image 1 have no 'masks'"):
        evaluator.update({1: ok})
    with pytest.raises(CocoFormatError, match=r"image 1: expected scores \[N\], labels \[N\], boxes \[N, 4\]"):
        evaluator.update({1: {**ok, "boxes": torch.zeros(3, 4)}})
    with pytest.raises(CocoFormatError, match=r"image 1: masks are 60x80 \(HxW\) but the ground-truth image is 120x160"):
        evaluator.update({1: {**ok, "masks": torch.zeros(2, 1, 60, 80)}})
    with pytest.raises(ValueError, match="iou_type must be one of"):
        CocoEvaluator(coco_gt, ("keypoints",))
    with pytest.raises(ValueError, match="backend must be one of"):
        CocoEvaluator(coco_gt, backend="detectron2")
    with pytest.raises(ValueError, match=r"iou_type 'segm' is not evaluated here"):
        CocoEvaluator(coco_gt).results("segm")


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def test_stats_dict_and_table() -> None:
    stats = [0.5, 0.75, -1.0, 0.125, 0.25, -1.0, 0.1, 0.2, 0.3, 0.4, 0.6, -1.0]
    d = stats_dict(stats)
    assert list(d) == list(STAT_NAMES) == ["AP", "AP50", "AP75", "APs", "APm", "APl",
                                           "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert d["AP50"] == 0.75 and d["ARl"] == -1.0
    assert set(STAT_DESCRIPTIONS) == set(STAT_NAMES)
    table = format_stats_table(stats, title="segm")
    lines = table.splitlines()
    assert lines[0] == "IoU metric: segm" and len(lines) == 2 + 12
    assert "-1" not in table
    assert lines[2].split()[:2] == ["AP", "0.500"] and lines[4].split()[:2] == ["AP75", "-"]
    assert len({line.index(STAT_DESCRIPTIONS[name]) for line, name in zip(lines[2:], STAT_NAMES)}) == 1  # fixed width
    with pytest.raises(ValueError, match="expected the 12 COCOeval stats, got 3"):
        stats_dict([1.0, 2.0, 3.0])


def test_per_class_table() -> None:
    rows = [{"category_id": 1, "name": "cat", "AP": 0.5, "AP50": 0.875, "AP75": 0.25, "num_gt": 12},
            {"category_id": 90, "name": "toothbrush", "AP": None, "AP50": None, "AP75": None, "num_gt": 0}]
    lines = format_per_class_table(rows).splitlines()
    assert lines[0].split() == ["id", "category", "AP", "AP50", "AP75", "#GT"]
    assert lines[1].split() == ["1", "cat", "0.500", "0.875", "0.250", "12"]
    assert lines[2].split() == ["90", "toothbrush", "-", "-", "-", "0"]
    assert len({len(line) for line in lines}) == 1
