"""Error report: confusion matrix against independent counts (planted cases, brute force, ``supervision``),
P/R/F1 from the matrix, F1-optimal thresholds against a brute-force sweep, the worst images."""

from __future__ import annotations

import numpy as np
import pytest

from torchdetr.data.coco import coco_from_dict
from torchdetr.errors import ConfigError
from torchdetr.evaluation.report import ALL, BACKGROUND, confusion_matrix, error_report, format_report_table

from .conftest import require_package

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"}]
K = len(CATEGORIES)


def _gt(boxes_per_image: list[list[tuple[list[float], int]]]):
    images, annotations = [], []
    for image_id, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 200, "height": 200})
        for box, category in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    return coco_from_dict({"images": images, "annotations": annotations, "categories": CATEGORIES})


def _det(image_id: int, box: list[float], category: int, score: float) -> dict:
    return {"image_id": image_id, "category_id": category, "bbox": box, "score": score}


def _index(category_id: int) -> int:
    return [c["id"] for c in CATEGORIES].index(category_id)


def _random_case(rng: np.random.Generator, images: int = 12):
    """Ground truth + detections: jittered copies of boxes (some relabelled), misses, and false positives."""
    gt_boxes, dets = [], []
    for image_id in range(1, images + 1):
        boxes = []
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(10, 50, 2)
            category = int(rng.choice([1, 2, 5]))
            boxes.append(([float(x), float(y), float(w), float(h)], category))
            if rng.random() < 0.8:  # detected, sometimes relabelled, jittered so that the IoU varies around 0.5
                jitter = rng.normal(0, 6, 4)
                label = category if rng.random() < 0.7 else int(rng.choice([1, 2, 5]))
                dets.append(_det(image_id, [float(x + jitter[0]), float(y + jitter[1]), float(max(w + jitter[2], 2)),
                                            float(max(h + jitter[3], 2))], label, float(rng.uniform(0.05, 1))))
        for _ in range(rng.integers(0, 3)):  # false positives
            x, y = rng.uniform(0, 150, 2)
            dets.append(_det(image_id, [float(x), float(y), 20.0, 20.0], int(rng.choice([1, 2, 5])),
                             float(rng.uniform(0.05, 1))))
        gt_boxes.append(boxes)
    return _gt(gt_boxes), dets


def test_planted_cases_fill_the_diagonal_the_off_diagonal_and_the_background_row_and_column():
    coco = _gt([
        [([10, 10, 40, 40], 1), ([100, 100, 30, 50], 2)],  # image 1: both detected as themselves → diagonal
        [([10, 10, 40, 40], 1), ([60, 60, 40, 40], 5)],  # image 2: the cat called a dog, the bird missed
        [],  # image 3: nothing there, one detection → background row
    ])
    dets = [
        _det(1, [10, 10, 40, 40], 1, 0.9), _det(1, [100, 100, 30, 50], 2, 0.8),
        _det(2, [10, 10, 40, 40], 2, 0.9),
        _det(3, [50, 50, 20, 20], 5, 0.7),
        _det(3, [10, 10, 20, 20], 1, 0.1),  # below --conf: not counted
    ]
    matrix, category_ids, images, unknown = confusion_matrix(coco, dets, conf=0.5, iou=0.5)
    expected = np.zeros((K + 1, K + 1), dtype=np.int64)
    expected[_index(1), _index(1)] += 1  # GT as detections → diagonal
    expected[_index(2), _index(2)] += 1
    expected[_index(1), _index(2)] += 1  # relabelled → off-diagonal (row: ground truth, column: prediction)
    expected[_index(5), K] += 1  # missed → background column
    expected[K, _index(5)] += 1  # false positive → background row
    assert category_ids == [1, 2, 5] and unknown == 0
    np.testing.assert_array_equal(matrix, expected)
    errors = {i.image_id: (i.fp, i.fn) for i in images}
    assert errors == {1: (0, 0), 2: (1, 2), 3: (1, 0)}


def test_ground_truth_given_as_detections_is_a_diagonal_matrix():
    rng = np.random.default_rng(0)
    coco, _ = _random_case(rng)
    dets = [_det(a["image_id"], a["bbox"], a["category_id"], 1.0) for a in coco.dataset["annotations"]]
    report = error_report(coco, dets)
    counts = np.bincount([_index(a["category_id"]) for a in coco.dataset["annotations"]], minlength=K + 1)
    np.testing.assert_array_equal(report.matrix, np.diag(counts))
    assert all(row.precision == row.recall == row.f1 == 1.0 for row in report.per_class if row.num_gt)
    assert report.images == []  # no image has an error


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("conf", "iou"), [(0.3, 0.5), (0.6, 0.3), (0.0, 0.75)])
def test_the_matrix_equals_supervision_confusion_matrix(seed, conf, iou):
    sv = require_package("supervision")
    coco, dets = _random_case(np.random.default_rng(seed))
    matrix, category_ids, _, _ = confusion_matrix(coco, dets, conf=conf, iou=iou)

    def xyxy(box):
        return [box[0], box[1], box[0] + box[2], box[1] + box[3]]

    targets, predictions = [], []
    for image_id in sorted(coco.getImgIds()):
        anns = coco.imgToAnns.get(image_id, [])
        targets.append(np.array([[*xyxy(a["bbox"]), _index(a["category_id"])] for a in anns], dtype=np.float64).reshape(-1, 5))
        own = [d for d in dets if d["image_id"] == image_id]
        predictions.append(np.array([[*xyxy(d["bbox"]), _index(d["category_id"]), d["score"]] for d in own],
                                    dtype=np.float64).reshape(-1, 6))
    # supervision matches pairs with IoU > iou (ours: >=): with random boxes no IoU equals the threshold exactly
    reference = sv.ConfusionMatrix.from_tensors(predictions, targets, classes=[c["name"] for c in CATEGORIES],
                                                conf_threshold=conf, iou_threshold=iou)
    np.testing.assert_array_equal(matrix, reference.matrix)


def test_precision_recall_f1_follow_from_the_counts():
    coco, dets = _random_case(np.random.default_rng(7), images=20)
    report = error_report(coco, dets, conf=0.4)
    m = report.matrix
    for k, row in enumerate(report.per_class):
        tp, fp, fn = m[k, k], m[:, k].sum() - m[k, k], m[k, :].sum() - m[k, k]
        assert (row.tp, row.fp, row.fn) == (tp, fp, fn)
        assert row.precision == pytest.approx(tp / (tp + fp))
        assert row.recall == pytest.approx(tp / (tp + fn))
        assert row.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert report.classes == ["cat", "dog", "bird", BACKGROUND]
    assert report.confusion_json()["matrix"] == m.tolist()
    assert "best thr" in format_report_table(report)


def _brute_force_f1(coco, dets, category: int | None, threshold: float, iou: float) -> tuple[float, int, int, int]:
    """COCO's matching written out: per image and class, detections by score, each to the unmatched ground-truth
    box of its class with the highest IoU >= iou. Returns (F1, TP, FP, number of ground-truth boxes)."""
    import torch
    from torchvision.ops import box_iou

    def xyxy(box):
        return [box[0], box[1], box[0] + box[2], box[1] + box[3]]

    tp = fp = n_gt = 0
    categories = [c["id"] for c in CATEGORIES] if category is None else [category]
    for image_id in coco.getImgIds():
        for cat in categories:
            gts = [a for a in coco.imgToAnns.get(image_id, []) if a["category_id"] == cat]
            n_gt += len(gts)
            own = sorted((d for d in dets if d["image_id"] == image_id and d["category_id"] == cat and d["score"] >= threshold),
                         key=lambda d: -d["score"])
            taken = set()
            for d in own:
                best, best_iou = None, iou
                for g, a in enumerate(gts):
                    value = float(box_iou(torch.tensor([xyxy(d["bbox"])]), torch.tensor([xyxy(a["bbox"])]))[0, 0])
                    if g not in taken and value >= best_iou:
                        best, best_iou = g, value
                if best is None:
                    fp += 1
                else:
                    taken.add(best)
                    tp += 1
    f1 = 2 * tp / (2 * tp + fp + (n_gt - tp)) if tp else 0.0
    return f1, tp, fp, n_gt


def test_f1_optimal_thresholds_equal_a_brute_force_sweep():
    coco, dets = _random_case(np.random.default_rng(3), images=15)
    iou = 0.5
    report = error_report(coco, dets, iou=iou)
    for category in [1, 2, 5, None]:
        own = [d for d in dets if category is None or d["category_id"] == category]
        candidates = sorted({d["score"] for d in own}, reverse=True)
        scored = [(_brute_force_f1(coco, dets, category, t, iou)[0], t) for t in candidates]
        best_f1 = max(f for f, _ in scored)
        best_threshold = max(t for f, t in scored if f == best_f1)  # the highest threshold among equals
        row = report.overall if category is None else next(r for r in report.per_class if r.category_id == category)
        assert row.best_f1 == pytest.approx(best_f1)
        assert row.best_threshold == pytest.approx(best_threshold)
    assert ALL in report.sweeps


def test_worst_images_are_those_with_most_errors():
    coco, dets = _random_case(np.random.default_rng(5), images=20)
    report = error_report(coco, dets, worst=3)
    _, _, images, _ = confusion_matrix(coco, dets)
    expected = sorted((i for i in images if i.errors), key=lambda i: (-i.errors, i.image_id))[:3]
    assert [i.image_id for i in report.images] == [i.image_id for i in expected]
    assert report.images[0].errors >= report.images[-1].errors > 0


def test_unknown_categories_are_counted_and_bad_thresholds_refused():
    coco = _gt([[([10, 10, 40, 40], 1)]])
    _, _, _, unknown = confusion_matrix(coco, [_det(1, [10, 10, 40, 40], 77, 0.9)])
    assert unknown == 1
    with pytest.raises(ConfigError, match="--conf"):
        confusion_matrix(coco, [], conf=1.5)
    with pytest.raises(ConfigError, match="--iou"):
        confusion_matrix(coco, [], iou=0)


def test_detr_eval_report_of_a_detections_file_and_of_a_run(tmp_path, capsys):
    import json

    from torchdetr.cli import main as cli_main
    from torchdetr.data.synthetic import write_coco_folder

    data = write_coco_folder(tmp_path / "data", num_train=4, num_val=6, seed=1)
    ann = data / "annotations" / "instances_val.json"
    gt = json.loads(ann.read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"]]
    dets[0]["category_id"] = next(c["id"] for c in gt["categories"] if c["id"] != dets[0]["category_id"])  # relabelled
    missed = dets.pop()  # a missed object
    results = tmp_path / "dets.json"
    results.write_text(json.dumps(dets))
    out = tmp_path / "report"
    assert cli_main(["eval", "--ann", str(ann), "--results", str(results), "--report", str(out), "--worst", "2"]) == 0
    saved = json.loads((out / "confusion_matrix.json").read_text())
    ids = sorted(c["id"] for c in gt["categories"])
    expected = np.zeros((len(ids) + 1, len(ids) + 1), dtype=int)
    for a in gt["annotations"]:
        expected[ids.index(a["category_id"]), ids.index(a["category_id"])] += 1
    first, last = gt["annotations"][0], gt["annotations"][-1]
    expected[ids.index(first["category_id"]), ids.index(first["category_id"])] -= 1
    expected[ids.index(first["category_id"]), ids.index(dets[0]["category_id"])] += 1
    expected[ids.index(last["category_id"]), ids.index(missed["category_id"])] -= 1
    expected[ids.index(last["category_id"]), len(ids)] += 1
    assert saved["matrix"] == expected.tolist() and saved["classes"][-1] == "background"
    assert {p.name for p in out.iterdir()} >= {"confusion_matrix.png", "confusion_matrix_normalized.png", "report.json",
                                               "report.txt", "f1_curve.png", "pr_curve.png", "worst_images"}
    assert len(list((out / "worst_images").glob("*.png"))) == 2
    assert cli_main(["eval", "--ann", str(ann), "--results", str(results), "--report", str(out)]) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err

    run = tmp_path / "run"
    train = ["train", "--coco_path", str(data), "--backbone", "resnet18", "--hidden_dim", "32", "--nheads", "2",
             "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "32", "--num_queries", "5", "--batch_size",
             "2", "--backbone_weights", "none", "--num_workers", "0", "--device", "cpu", "--epochs", "1",
             "--image_size", "64", "--output_dir", str(run), "--report", "false"]
    assert cli_main(train) == 0 and not (run / "report").exists()
    assert cli_main(["eval", "--model", str(run), "--coco_path", str(data), "--image_size", "64", "--device", "cpu",
                     "--num_workers", "0", "--report", str(tmp_path / "model_report"), "--conf", "0.0"]) == 0
    report = json.loads((tmp_path / "model_report" / "report.json").read_text())
    assert report["model"] == str(run / "checkpoint_best.pth") and report["conf"] == 0.0
