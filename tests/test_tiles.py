"""Tiled inference (inference/tiles.py): the window grid, boxes mapped back to image pixels (closed form,
with planted models), class-aware merging (no same-class pair above IoU 0.5), and ``detr predict`` with
and without ``--tile``."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.ops import box_iou

from torchdetr import Detector
from torchdetr.cli import main
from torchdetr.cli.predict import coco_results
from torchdetr.errors import ConfigError
from torchdetr.inference.detection import Detection
from torchdetr.inference.tiles import Tiling, merge_detections, tile_windows, window_starts

from .planted import BrightBlobModel, FixedBoxModel
from .test_predict import random_image, write_tiny_checkpoint

TILE = 64


def planted_detector(model) -> Detector:
    """A Detector that sees 64-px windows unresized (image_size = max_size = the tile)."""
    return Detector(model, {1: "thing"}, threshold=0.5, image_size=TILE, max_size=TILE, batch_size=4)


def same_class_ious(detections: list[Detection]) -> list[float]:
    ious = []
    for label in {d.label for d in detections}:
        boxes = torch.tensor([d.box for d in detections if d.label == label], dtype=torch.float64)
        matrix = box_iou(boxes, boxes)
        ious += matrix[~torch.eye(len(boxes), dtype=torch.bool)].tolist()
    return ious


@settings(max_examples=200, deadline=None)
@given(side=st.integers(1, 3000), tile=st.integers(16, 1024), overlap=st.floats(0.0, 0.9))
def test_windows_cover_the_side_inside_the_image_with_at_least_the_overlap(side, tile, overlap):
    starts = window_starts(side, tile, overlap)
    if side <= tile:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] == side - tile
    steps = np.diff(starts)
    assert (steps > 0).all()
    assert (tile - steps >= math.floor(overlap * tile) - 1).all()  # shared pixels: the overlap (rounding of starts: 1 px)


def test_fixed_box_per_window_maps_back_to_image_pixels_in_closed_form():
    # 160 x 100 image, 64-px windows, overlap 0.25 → stride 48: x starts 0, 48, 96 (96 = 160 - 64); y starts 0, 36
    detector = planted_detector(FixedBoxModel((0.5, 0.5, 0.25, 0.25)))  # each window: box (24, 24)-(40, 40) of 64 px
    image = Image.new("RGB", (160, 100))
    found = detector.predict(image, tile=TILE, overlap=0.25)
    expected = {(x + 24.0, y + 24.0, x + 40.0, y + 40.0) for x in (0, 48, 96) for y in (0, 36)}
    assert len(found) == len(expected)
    for detection in found:
        assert any(np.allclose(detection.box, box, atol=1e-4) for box in expected)
    assert tile_windows(160, 100, Tiling(TILE, 0.25)) == [(x, y, x + 64, y + 64) for y in (0, 36) for x in (0, 48, 96)]


def test_objects_across_window_borders_are_found_once_in_image_pixels_and_never_duplicated():
    squares = [(10, 10, 30, 30), (50, 20, 70, 38), (90, 60, 108, 80), (120, 100, 140, 118), (170, 5, 190, 25)]
    pixels = np.zeros((150, 200, 3), np.uint8)
    for x1, y1, x2, y2 in squares:
        pixels[y1:y2, x1:x2] = 255
    detector = planted_detector(BrightBlobModel())
    found = detector.predict(Image.fromarray(pixels), tile=TILE, overlap=0.5)
    for square in squares:  # every object wholly inside some window: its exact box, found once
        matches = [d for d in found if np.allclose(d.box, square, atol=1e-4)]
        assert len(matches) == 1, square
    assert all(iou <= 0.5 for iou in same_class_ious(found))
    sure = [d for d in found if d.score > 0.99]  # objects cut by a window edge score lower, as planted
    assert sorted(tuple(round(v) for v in d.box) for d in sure) == sorted(squares)
    untiled = detector.predict(Image.fromarray(pixels))  # the whole image (resized to 64): boxes scaled back
    assert len(untiled) == len(squares)


def test_full_image_adds_objects_larger_than_a_window():
    pixels = np.zeros((128, 128, 3), np.uint8)
    pixels[16:112, 16:112] = 255  # 96 px: wider than any 64-px window
    detector = planted_detector(BrightBlobModel())
    big = (16.0, 16.0, 112.0, 112.0)
    assert not any(np.allclose(d.box, big, atol=1.0) for d in detector.predict(Image.fromarray(pixels), tile=TILE))
    with_full = detector.predict(Image.fromarray(pixels), tile=TILE, tile_full=True)
    assert any(np.allclose(d.box, big, atol=1.0) and d.score > 0.99 for d in with_full)
    assert all(iou <= 0.5 for iou in same_class_ious(with_full))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 90), st.floats(0, 90), st.floats(2, 40), st.floats(2, 40), st.floats(0.01, 1),
                          st.integers(1, 3)), max_size=30))
def test_merge_leaves_no_same_class_pair_above_the_iou_and_drops_only_covered_detections(raw):
    detections = [Detection((x, y, x + w, y + h), s, label, str(label), i) for i, (x, y, w, h, s, label) in enumerate(raw)]
    kept = merge_detections(detections, 0.5)
    assert all(iou <= 0.5 for iou in same_class_ious(kept))
    assert [d.score for d in kept] == sorted((d.score for d in kept), reverse=True)
    for dropped in set(detections) - set(kept):  # each dropped one overlaps a kept one of its class, scoring at least as high
        assert any(k.label == dropped.label and k.score >= dropped.score
                   and box_iou(torch.tensor([k.box]), torch.tensor([dropped.box])).item() > 0.5 for k in kept)


def test_merge_is_class_aware():
    a = Detection((0, 0, 10, 10), 0.9, 1, "a", 0)
    b = Detection((0, 0, 10, 10), 0.8, 2, "b", 1)
    c = Detection((1, 0, 11, 10), 0.7, 1, "a", 2)
    assert merge_detections([c, b, a]) == [a, b]


def test_tiling_options_are_checked():
    for bad in (dict(tile=8), dict(tile=64, overlap=1.0), dict(tile=64, overlap=-0.1)):
        with pytest.raises(ConfigError):
            Tiling(**bad)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth")


def test_predict_without_tile_is_the_untiled_path_and_with_tile_the_tiled_api(tmp_path, checkpoint, capsys):
    image_path = tmp_path / "in" / "big.png"
    image_path.parent.mkdir()
    random_image(150, 230, seed=4).save(image_path)
    common = ["--model", str(checkpoint), "--threshold", "0", "--device", "cpu", "--image_size", "64", "--no_render"]
    assert main(["predict", str(image_path.parent), "--output", str(tmp_path / "plain"), *common]) == 0
    detector = Detector.from_pretrained(checkpoint, "cpu", threshold=0.0, image_size=64)
    with Image.open(image_path) as opened:
        expected = coco_results(detector.detect([opened.convert("RGB")])[0], 1, "big.png")
    assert json.loads((tmp_path / "plain" / "predictions.json").read_text()) == expected  # bit for bit: no tiling involved

    assert main(["predict", str(image_path), "--output", str(tmp_path / "tiled"), "--tile", "96", "--overlap", "0.3",
                 *common]) == 0
    tiled = detector.predict(image_path, tile=96, overlap=0.3)
    assert json.loads((tmp_path / "tiled" / "predictions.json").read_text()) == coco_results(tiled, 1, "big.png")
    assert all(iou <= 0.5 for iou in same_class_ious(tiled))

    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["predict", str(image_path), "--output", str(tmp_path / "x"), "--overlap", "0.3", *common]) == 2
    assert "--tile" in err.getvalue()
