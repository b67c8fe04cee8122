"""Tests of torchdetr.data.coco and the coco branch of torchdetr.data.build."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from tests.conftest import DATA, require
from torchdetr.config import DETRConfig
from torchdetr.data.build import build_dataset, get_coco_api
from torchdetr.data.coco import (
    CocoDetection,
    category_names,
    implied_num_classes,
    load_coco_api,
    resolve_coco_layout,
)
from torchdetr.data.transforms import make_transforms
from torchdetr.errors import DataError
from torchdetr.structures import NestedTensor, collate_fn

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}]


def _rect_polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _write_images(folder: Path) -> list[dict]:
    """Images of several kinds; returns their COCO 'images' entries."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "rgb.png")
    PIL.Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8), mode="L").save(folder / "gray.png")
    PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), mode="RGBA").save(folder / "rgba.png")
    PIL.Image.new("RGB", (20, 20), (9, 9, 9)).save(folder / "empty.png")
    # stored 60 wide x 40 tall, EXIF orientation 6: displayed 40 wide x 60 tall
    stored = np.zeros((40, 60, 3), dtype=np.uint8)
    stored[:, :30] = (255, 0, 0)
    stored[:10, :] = (0, 0, 255)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    PIL.Image.fromarray(stored).save(folder / "exif.jpg", exif=exif.tobytes(), quality=95)
    return [
        {"id": 1, "file_name": "rgb.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "gray.png", "width": 40, "height": 30},
        {"id": 3, "file_name": "rgba.png", "width": 32, "height": 32},
        {"id": 4, "file_name": "empty.png", "width": 20, "height": 20},
        {"id": 5, "file_name": "exif.jpg", "width": 40, "height": 60},
    ]


def _annotations() -> list[dict]:
    def ann(i, image_id, cat, bbox, **extra):
        return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3],
                "iscrowd": 0, "segmentation": _rect_polygon(*bbox), **extra}

    return [
        ann(1, 1, 1, [5, 6, 20, 10]),
        ann(2, 1, 7, [30, 2, 10, 10], iscrowd=1, segmentation={"size": [48, 64], "counts": [48 * 30 + 2, 10]}),
        ann(3, 1, 1, [10, 10, 0, 5]),  # no width: dropped
        ann(4, 1, 7, [50, 40, 30, 30]),  # clipped to the image
        ann(5, 1, 1, [70, 10, 5, 5]),  # outside the image: dropped
        ann(6, 2, 7, [1, 2, 3, 4]),
        ann(7, 3, 1, [0, 0, 32, 32]),
        ann(8, 5, 7, [2, 3, 10, 20]),
    ]


def _write_dataset(root: Path, image_folder: str = "images", ann_name: str = "instances_train.json") -> Path:
    images = _write_images(root / image_folder)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": _annotations(), "categories": CATEGORIES}
    (root / "annotations" / ann_name).write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def generic_root(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("generic"))


def _item(dataset: CocoDetection, image_id: int):
    return dataset[dataset.ids.index(image_id)]


# ------------------------------------------------------------------ layouts
def test_resolve_both_layouts(tmp_path):
    generic = _write_dataset(tmp_path / "generic")
    assert resolve_coco_layout(generic, "train") == (generic / "images", generic / "annotations/instances_train.json")

    sub = _write_dataset(tmp_path / "sub", image_folder="images/train")
    assert resolve_coco_layout(sub, "train") == (sub / "images/train", sub / "annotations/instances_train.json")

    coco = _write_dataset(tmp_path / "coco", image_folder="val2017", ann_name="instances_val2017.json")
    assert resolve_coco_layout(str(coco), "val") == (coco / "val2017", coco / "annotations/instances_val2017.json")
    assert len(CocoDetection(*resolve_coco_layout(coco, "val"))) == 5


def test_resolve_reports_what_was_looked_for(tmp_path):
    (tmp_path / "pictures").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        resolve_coco_layout(tmp_path, "val")
    message = str(err.value)
    for expected in ("val2017/", "instances_val2017.json", "images/", "instances_val.json", "pictures/"):
        assert expected in message
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_coco_layout(tmp_path / "nowhere", "train")


# ------------------------------------------------------------------ targets
def test_targets_follow_convert_coco_polys_to_mask(generic_root):
    dataset = CocoDetection(generic_root / "images", generic_root / "annotations/instances_train.json")
    assert len(dataset) == 5
    image, target = _item(dataset, 1)
    assert image.mode == "RGB" and image.size == (64, 48)
    # crowd (2), zero-width (3) and outside (5) boxes left out; (4) clipped to the 64 x 48 image
    expected = torch.tensor([[5, 6, 25, 16], [50, 40, 64, 48]], dtype=torch.float32)
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [1, 7]  # category ids as in the file
    torch.testing.assert_close(target["area"], torch.tensor([200.0, 900.0]))  # the file's area
    assert target["iscrowd"].tolist() == [0, 0]
    assert target["image_id"].tolist() == [1]
    assert target["orig_size"].tolist() == [48, 64] and target["size"].tolist() == [48, 64]
    assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32
    # the crowd annotation stays in the ground truth used for evaluation
    assert dataset.coco.anns[2]["iscrowd"] == 1


def test_empty_image_has_no_boxes(generic_root):
    dataset = CocoDetection(generic_root / "images", generic_root / "annotations/instances_train.json",
                            return_masks=True)
    _, target = _item(dataset, 4)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 20, 20)
    image, target = make_transforms("val", image_size=32)(*_item(dataset, 4))
    assert target["boxes"].shape == (0, 4) and image.shape == (3, 32, 32)


def test_masks_from_polygons_agree_with_boxes_and_pycocotools(generic_root):
    dataset = CocoDetection(generic_root / "images", generic_root / "annotations/instances_train.json",
                            return_masks=True)
    _, target = _item(dataset, 1)
    masks = target["masks"]
    assert masks.shape == (2, 48, 64) and masks.dtype == torch.uint8
    for mask, box, ann_id in zip(masks, target["boxes"], (1, 4)):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        torch.testing.assert_close(found, box, atol=1.0, rtol=0)
        with warnings.catch_warnings():  # pycocotools' decode trips a numpy 2 DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            oracle = dataset.coco.annToMask(dataset.coco.anns[ann_id])
        np.testing.assert_array_equal(mask.numpy(), oracle)


def test_grayscale_and_rgba_become_rgb(generic_root):
    dataset = CocoDetection(generic_root / "images", generic_root / "annotations/instances_train.json")
    gray, _ = _item(dataset, 2)
    assert gray.mode == "RGB" and gray.size == (40, 30)
    pixels = np.asarray(gray)
    np.testing.assert_array_equal(pixels[..., 0], np.asarray(PIL.Image.open(generic_root / "images/gray.png")))
    assert (pixels[..., 0] == pixels[..., 2]).all()
    rgba, target = _item(dataset, 3)
    assert rgba.mode == "RGB"
    raw = np.asarray(PIL.Image.open(generic_root / "images/rgba.png")).astype(np.float64)
    alpha = raw[..., 3:] / 255
    over_white = raw[..., :3] * alpha + 255 * (1 - alpha)  # alpha compositing over the white background
    np.testing.assert_allclose(np.asarray(rgba), over_white, atol=1)
    assert target["boxes"].tolist() == [[0, 0, 32, 32]]


def test_exif_rotated_image_is_upright(generic_root):
    dataset = CocoDetection(generic_root / "images", generic_root / "annotations/instances_train.json")
    image, target = _item(dataset, 5)
    assert image.size == (40, 60)
    # EXIF orientation 6 = displayed after rotating the stored pixels 90° clockwise
    stored = PIL.Image.open(generic_root / "images/exif.jpg")
    assert stored.size == (60, 40)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(stored.convert("RGB").transpose(PIL.Image.Transpose.ROTATE_270)))
    # the stored top band (blue) is now the right band
    assert np.asarray(image)[30, -3, 2] > 200 and np.asarray(image)[30, -3, 0] < 60
    assert target["orig_size"].tolist() == [60, 40]


def _single_image_dataset(tmp_path: Path, file_name: str, width: int, height: int, source: Path) -> CocoDetection:
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    if source.exists():
        (tmp_path / "images" / file_name).write_bytes(source.read_bytes())
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": file_name, "width": width, "height": height}],
                               "annotations": [], "categories": CATEGORIES}))
    return CocoDetection(tmp_path / "images", ann)


def test_exif_annotations_in_stored_orientation_are_kept(generic_root, tmp_path):
    dataset = _single_image_dataset(tmp_path, "exif.jpg", 60, 40, generic_root / "images/exif.jpg")
    image, target = dataset[0]
    assert image.size == (60, 40) and target["orig_size"].tolist() == [40, 60]


def test_size_mismatch_names_the_file(generic_root, tmp_path):
    dataset = _single_image_dataset(tmp_path, "rgb.png", 50, 50, generic_root / "images/rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png.*64x48.*50x50"):
        dataset[0]


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    dataset = _single_image_dataset(tmp_path, "missing.jpg", 10, 10, tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        dataset[0]
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image at all")
    dataset = _single_image_dataset(tmp_path, "broken.jpg", 10, 10, tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        dataset[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"annotations": [], "categories": []}), "'images'"),
        (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
                     "annotations": [], "categories": []}), r"images\[1\]: duplicate id 1"),
        (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": CATEGORIES,
                     "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}]}),
         "category_id 3"),
        (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": CATEGORIES,
                     "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}),
         "image_id 2"),
        (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": CATEGORIES,
                     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]}),
         "bbox"),
    ],
)
def test_bad_annotation_files_are_reported(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_coco_api(path)
    assert "bad.json" in str(err.value)


def test_missing_annotation_file_and_folder(tmp_path, generic_root):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_coco_api(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="no_images"):
        CocoDetection(tmp_path / "no_images", generic_root / "annotations/instances_train.json")


def test_masks_need_segmentations(tmp_path):
    (tmp_path / "images").mkdir()
    PIL.Image.new("RGB", (10, 10)).save(tmp_path / "images/a.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
                               "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5],
                                                "iscrowd": 0}],
                               "categories": CATEGORIES}))
    _, target = CocoDetection(tmp_path / "images", ann)[0]
    assert target["area"].tolist() == [25.0]  # filled in from the box
    with pytest.raises(DataError, match=r"ann\.json: annotations\[0\] \(id 9\) has no 'segmentation'"):
        CocoDetection(tmp_path / "images", ann, return_masks=True)  # refused when the file is loaded


# ------------------------------------------------------------------ categories, ground truth, batches
def test_categories_and_ground_truth(generic_root):
    dataset = CocoDetection(generic_root / "images", generic_root / "annotations/instances_train.json")
    assert category_names(dataset) == {1: "cat", 7: "dog"}
    assert implied_num_classes(dataset.coco) == 8
    nested = Subset(Subset(dataset, [0, 1]), [0])
    assert get_coco_api(nested) is dataset.coco
    with pytest.raises(TypeError, match="no COCO ground truth"):
        get_coco_api(torch.utils.data.TensorDataset(torch.zeros(2)))


def test_collate_with_transforms(generic_root):
    dataset = CocoDetection(generic_root / "images", generic_root / "annotations/instances_train.json",
                            transforms=make_transforms("val", image_size=32))
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate_fn)
    samples, targets = next(iter(loader))
    assert isinstance(samples, NestedTensor) and len(targets) == 3
    sizes = [tuple(t["size"].tolist()) for t in targets]
    assert samples.tensors.shape == (3, 3, max(h for h, _ in sizes), max(w for _, w in sizes))
    assert samples.image_sizes == sizes
    for t in targets:
        assert t["boxes"].shape[1] == 4 and ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()


def test_build_dataset_coco_branch(generic_root):
    cfg = DETRConfig(dataset_file="coco", coco_path=str(generic_root), image_size=32)
    dataset = build_dataset("train", cfg)
    assert isinstance(dataset, CocoDetection) and len(dataset) == 5
    image, target = dataset[0]
    assert min(image.shape[-2:]) <= 32 and target["boxes"].shape[1] == 4
    with pytest.raises(ValueError, match="--coco_path"):
        build_dataset("train", DETRConfig(dataset_file="coco"))
    with pytest.raises(ValueError, match="--coco_path is required with --dataset_file coco_panoptic"):
        build_dataset("train", DETRConfig(dataset_file="coco_panoptic"))
    with pytest.raises(FileNotFoundError, match="instances_val"):
        build_dataset("val", cfg)


# ------------------------------------------------------------------ the real BCCD dataset
def test_bccd():
    root = require(DATA / "bccd")
    cfg = DETRConfig(dataset_file="coco", coco_path=str(root), image_size=64)
    dataset = build_dataset("train", cfg)
    assert len(dataset) == 205
    assert category_names(dataset) == {1: "Platelets", 2: "RBC", 3: "WBC"}
    assert implied_num_classes(get_coco_api(dataset)) == 4
    raw = json.loads((root / "annotations/instances_train.json").read_text())
    first = min(image["id"] for image in raw["images"])
    expected = [a for a in raw["annotations"] if a["image_id"] == first and not a.get("iscrowd", 0)]
    dataset.transforms = make_transforms("val", image_size=64)
    image, target = dataset[0]
    assert target["image_id"].tolist() == [first]
    assert sorted(target["labels"].tolist()) == sorted(a["category_id"] for a in expected)
    assert image.shape == (3, 64, 85)  # 480 x 640 → resize_shape(480, 640, 64, 107)
    assert target["orig_size"].tolist() == [480, 640]
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()


def test_exif_rotated_grayscale_image(tmp_path):
    stored = np.zeros((10, 30), dtype=np.uint8)
    stored[:, :5] = 255  # a white band on the left of the stored pixels
    exif = PIL.Image.Exif()
    exif[0x0112] = 8  # displayed after rotating the stored pixels 90° counter-clockwise
    source = tmp_path / "gray_exif.png"
    PIL.Image.fromarray(stored, mode="L").save(source, exif=exif.tobytes())
    image, _ = _single_image_dataset(tmp_path / "ds", "gray_exif.png", 10, 30, source)[0]
    assert image.mode == "RGB" and image.size == (10, 30)
    expected = np.rot90(stored)  # numpy rot90 turns counter-clockwise: the left band becomes the bottom band
    np.testing.assert_array_equal(np.asarray(image)[..., 1], expected)
