"""Tests of torchdetr.data.synthetic and the synthetic branch of torchdetr.data.build."""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader

from torchdetr.config import DETRConfig
from torchdetr.data.build import build_dataset
from torchdetr.data.coco import CocoDetection, category_names, implied_num_classes, resolve_coco_layout
from torchdetr.data.synthetic import (
    CLASS_NAMES,
    SyntheticShapes,
    shape_mask,
    split_seed,
    write_coco_folder,
)
from torchdetr.structures import NestedTensor, collate_fn


def _pixels(dataset: SyntheticShapes, index: int) -> np.ndarray:
    return np.asarray(dataset[index][0])


def _annotations(dataset: SyntheticShapes, index: int) -> list[dict]:
    return dataset.coco.imgToAnns[dataset.ids[index]]


@pytest.fixture(scope="module")
def shapes() -> SyntheticShapes:
    return SyntheticShapes(40, seed=3)


def test_same_seed_same_bytes_in_any_order():
    a = SyntheticShapes(6, seed=11)
    b = SyntheticShapes(6, seed=11)
    order_b = {i: _pixels(b, i) for i in reversed(range(6))}
    for i in range(6):
        assert _pixels(a, i).tobytes() == order_b[i].tobytes()
    assert json.dumps(a.coco.dataset) == json.dumps(b.coco.dataset)
    c = SyntheticShapes(6, seed=12)
    assert any(_pixels(a, i).tobytes() != _pixels(c, i).tobytes() for i in range(6))
    # a longer dataset with the same seed starts with the same images
    assert _pixels(SyntheticShapes(9, seed=11), 4).tobytes() == _pixels(a, 4).tobytes()


def test_same_images_in_worker_processes():
    dataset = SyntheticShapes(4, seed=5)
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=lambda batch: batch[0])
    for i, (image, target) in enumerate(loader):
        assert np.asarray(image).tobytes() == _pixels(dataset, i).tobytes()
        assert torch.equal(target["boxes"], dataset[i][1]["boxes"])


def test_categories_counts_and_sizes(shapes):
    assert category_names(shapes) == {1: "circle", 2: "square", 3: "triangle", 4: "cross", 5: "ring"}
    assert implied_num_classes(shapes.coco) == len(CLASS_NAMES) + 1
    size = shapes.image_size
    per_image = [len(_annotations(shapes, i)) for i in range(len(shapes))]
    assert min(per_image) >= 1 and max(per_image) <= 6 and len(set(per_image)) > 3
    for ann in shapes.coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w == h and math.ceil(0.12 * size) <= w <= math.floor(0.6 * size)
        assert 0 <= x and x + w <= size and 0 <= y and y + h <= size
    assert {a["category_id"] for a in shapes.coco.dataset["annotations"]} == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("category_id", [1, 2, 3, 4, 5])
def test_shape_areas_match_closed_forms(category_id):
    side = 60
    r = side / 2
    expected = {
        1: math.pi * r * r,
        2: side * side,
        3: side * side / 2,
        4: side * side - 4 * ((side - 0.34 * side) / 2) ** 2,
        5: math.pi * (r * r - (0.55 * r) ** 2),
    }[category_id]
    mask = shape_mask(category_id, side, 1)
    assert abs(mask.sum() - expected) / expected < 0.05
    # every shape touches the four sides of its square
    assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()


def test_boxes_and_areas_match_drawn_pixels(shapes):
    for i in range(len(shapes)):
        pixels = _pixels(shapes, i)
        annotations = _annotations(shapes, i)
        colors = [tuple(a["color"]) for a in annotations]
        for k, ann in enumerate(annotations):
            if colors.count(tuple(ann["color"])) > 1:
                continue
            drawn = (pixels == np.array(ann["color"], dtype=np.uint8)).all(-1)
            ys, xs = np.nonzero(drawn)
            found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            x, y, w, h = ann["bbox"]
            assert x <= found[0] and y <= found[1] and found[2] <= x + w and found[3] <= y + h
            if k == len(annotations) - 1:  # drawn last: nothing covers it, the box is its exact extent
                assert found == (x, y, x + w, y + h)
            assert drawn.sum() == ann["area"]
            with warnings.catch_warnings():  # pycocotools' decode trips a numpy 2 DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), drawn)
            full = shape_mask(ann["category_id"], int(w)).sum()
            assert ann["area"] >= 0.3 * full


def test_targets_match_annotations(shapes):
    image, target = shapes[2]
    annotations = _annotations(shapes, 2)
    assert image.size == (128, 128) and image.mode == "RGB"
    expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [a["category_id"] for a in annotations]
    assert target["image_id"].tolist() == [3] and target["orig_size"].tolist() == [128, 128]
    _, with_masks = SyntheticShapes(3, seed=3, return_masks=True)[2]
    assert with_masks["masks"].shape == (len(annotations), 128, 128)
    assert with_masks["masks"].sum((1, 2)).tolist() == [a["area"] for a in annotations]


def test_coco_evaluation_of_perfect_detections(shapes):
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in shapes.coco.dataset["annotations"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(shapes.coco, shapes.coco.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_write_coco_folder_round_trip(tmp_path):
    root = write_coco_folder(tmp_path / "shapes", num_train=5, num_val=3, seed=7, image_size=64)
    assert root == tmp_path / "shapes"
    train = CocoDetection(*resolve_coco_layout(root, "train"))
    val = CocoDetection(*resolve_coco_layout(root, "val"))
    assert (len(train), len(val)) == (5, 3)
    reference = SyntheticShapes(5, seed=split_seed(7, "train"), image_size=64)
    for i in range(5):
        (image, target), (ref_image, ref_target) = train[i], reference[i]
        assert np.asarray(image).tobytes() == np.asarray(ref_image).tobytes()
        for key in ref_target:
            assert torch.equal(target[key], ref_target[key]), key
    assert np.asarray(train[0][0]).tobytes() != np.asarray(val[0][0]).tobytes()
    assert split_seed(7, "train") != split_seed(7, "val")


def test_build_dataset_synthetic_branch():
    cfg = DETRConfig(dataset_file="synthetic", num_train=4, num_val=2, seed=7)
    train, val = build_dataset("train", cfg), build_dataset("val", cfg)
    assert (len(train), len(val)) == (4, 2)
    assert train.image_size == 128  # the default image_size 800 means the native 128 px
    assert train.render(0).tobytes() == SyntheticShapes(1, seed=split_seed(7, "train")).render(0).tobytes()
    assert train.render(0).tobytes() != val.render(0).tobytes()
    image, target = val[0]
    assert image.shape == (3, 128, 128) and target["boxes"].shape[1] == 4
    torch.manual_seed(0)
    samples, targets = collate_fn([train[i] for i in range(4)])
    assert isinstance(samples, NestedTensor) and samples.tensors.shape[:2] == (4, 3) and len(targets) == 4
    # the recipe scaled to 128 px: short sides 77..128, long sides under max_size round(1333 * 128 / 800) = 213
    for height, width in samples.image_sizes:
        assert 77 <= min(height, width) <= 128 and max(height, width) <= 213
    small = build_dataset("val", cfg.replace(image_size=64))
    assert small.image_size == 64 and small[0][0].shape == (3, 64, 64)


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        SyntheticShapes(2, image_size=16)
    with pytest.raises(ValueError, match="seed"):
        SyntheticShapes(2, seed=-1)
    with pytest.raises(ValueError, match="'dev'"):
        split_seed(0, "dev")
    with pytest.raises(IndexError):
        SyntheticShapes(2)[2]
