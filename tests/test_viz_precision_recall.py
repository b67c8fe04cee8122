"""Precision/recall curves from saved COCO evaluations: checked against pycocotools' own summary numbers."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from torchdetr.cli import main
from torchdetr.viz.precision_recall import load_coco_eval, plot_precision_recall, pr_curve


def _coco_eval() -> COCOeval:
    """A tiny evaluation: 3 images, classes 1 and 2 with ground truth, class 3 without."""
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3)],
        "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [20, 20, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 4, "image_id": 3, "category_id": 2, "bbox": [0, 0, 60, 30], "area": 1800, "iscrowd": 0},
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [11, 11, 30, 30], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20], "score": 0.8},  # wrong place
        {"image_id": 2, "category_id": 1, "bbox": [22, 18, 48, 52], "score": 0.7},
        {"image_id": 3, "category_id": 2, "bbox": [2, 0, 58, 31], "score": 0.4},
        {"image_id": 3, "category_id": 3, "bbox": [5, 5, 10, 10], "score": 0.3},  # class without ground truth
        {"image_id": 2, "category_id": 2, "bbox": [60, 60, 20, 20], "score": 0.6},  # false positive
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(detections)
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _save_eval(evaluation: COCOeval, path) -> None:
    """The documented file layout: COCOeval.eval with tensors and ``params`` as a plain dict of lists."""
    params = {k: (np.asarray(v).tolist() if k in ("iouThrs", "recThrs", "imgIds", "catIds") else v)
              for k, v in vars(evaluation.params).items()}
    data = {k: torch.from_numpy(np.asarray(evaluation.eval[k])) for k in ("precision", "recall", "scores")}
    torch.save(data | {"params": params}, path)


@pytest.fixture(scope="module")
def evaluation() -> COCOeval:
    return _coco_eval()


def test_curve_averages_agree_with_pycocotools(tmp_path, evaluation):
    path = tmp_path / "eval.pth"
    _save_eval(evaluation, path)
    data = load_coco_eval(path)
    curve = pr_curve(data, iou=0.5)
    assert curve.mean_precision == pytest.approx(evaluation.stats[1])  # AP50
    assert pr_curve(data, iou=0.75).mean_precision == pytest.approx(evaluation.stats[2])  # AP75
    assert curve.mean_recall == pytest.approx(evaluation.stats[8], abs=0.11)  # AR100 averages IoUs .5:.95
    recall_at_50 = np.asarray(evaluation.eval["recall"])[0, :, 0, -1]
    assert curve.mean_recall == pytest.approx(recall_at_50[recall_at_50 > -1].mean())
    assert curve.recall.shape == curve.precision.shape == (101,)
    assert np.all(np.diff(curve.precision[np.isfinite(curve.precision)]) <= 1e-12)  # COCO precision is non-increasing


def test_classes_without_ground_truth_are_left_out(tmp_path):
    precision = -np.ones((10, 101, 3, 4, 3))
    precision[:, :, 0] = 0.8
    precision[:, :, 1] = 0.4  # class 2 (index 2) stays -1: no ground truth
    recall = -np.ones((10, 3, 4, 3))
    recall[:, 0], recall[:, 1] = 0.9, 0.5
    params = {"iouThrs": np.linspace(0.5, 0.95, 10).tolist(), "recThrs": np.linspace(0, 1, 101).tolist(),
              "areaRngLbl": ["all", "small", "medium", "large"]}
    path = tmp_path / "eval.pth"
    torch.save({"precision": torch.from_numpy(precision), "recall": torch.from_numpy(recall), "params": params}, path)
    curve = pr_curve(load_coco_eval(path))
    np.testing.assert_allclose(curve.precision, 0.6)
    assert curve.mean_recall == pytest.approx(0.7)
    assert curve.scores is None


def test_errors_name_the_file_and_value(tmp_path, evaluation):
    path = tmp_path / "eval.pth"
    _save_eval(evaluation, path)
    with pytest.raises(ValueError, match=r"--iou 0\.33"):
        pr_curve(load_coco_eval(path), iou=0.33)
    not_eval = tmp_path / "other.pth"
    torch.save({"model": {}}, not_eval)
    with pytest.raises(ValueError, match=r"other\.pth"):
        load_coco_eval(not_eval)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        load_coco_eval(garbage)
    with pytest.raises(FileNotFoundError):
        load_coco_eval(tmp_path / "absent.pth")


def test_figure_and_cli(tmp_path, evaluation, capsys):
    paths = [tmp_path / "a.pth", tmp_path / "b.pth"]
    for p in paths:
        _save_eval(evaluation, p)
    fig, curves = plot_precision_recall(paths, names=["first", "second"])
    ax_pr, ax_scores = fig.axes
    assert len(ax_pr.get_lines()) == 2 and len(ax_scores.get_lines()) == 2
    np.testing.assert_allclose(ax_pr.get_lines()[0].get_ydata(), curves[0].precision)
    out = tmp_path / "pr.png"
    assert main(["plot", "pr", *map(str, paths), "--output", str(out)]) == 0
    assert out.stat().st_size > 5000
    assert f"AP50 {evaluation.stats[1]:.3f}" in capsys.readouterr().out
