"""Dataset statistics against direct counts made with pycocotools' own index."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from torchdetr.data.stats import MEDIUM_AREA, SMALL_AREA, compute_stats, format_stats, plot_stats, size_bucket

CLASSES = ["ant", "bee", "cow"]


def random_dataset(path: Path, seed: int = 0, num_images: int = 40) -> dict:
    """Random image sizes and float boxes (so no area sits exactly on a threshold); some images empty."""
    rng = random.Random(seed)
    images, annotations = [], []
    for i in range(1, num_images + 1):
        w, h = rng.choice([(640, 480), (320, 240), (500, 375)])
        images.append({"id": i, "file_name": f"{i}.jpg", "width": w, "height": h})
        for _ in range(rng.choice([0, 0, 1, 3, 7, 12])):
            bw, bh = rng.uniform(2, 200), rng.uniform(2, 200)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": rng.randint(1, 3),
                                "bbox": [rng.uniform(0, 100), rng.uniform(0, 100), bw, bh], "area": bw * bh, "iscrowd": 0})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES, start=1)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return data


def coco_index(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_counts_match_pycocotools(tmp_path):
    path = tmp_path / "instances_train.json"
    random_dataset(path)
    stats = compute_stats(path)
    coco = coco_index(path)
    assert stats.name == "train"
    assert stats.num_images == len(coco.getImgIds())
    assert stats.num_boxes == len(coco.getAnnIds())
    assert stats.boxes_per_class == {c["name"]: len(coco.getAnnIds(catIds=[c["id"]])) for c in coco.loadCats(coco.getCatIds())}
    assert stats.boxes_per_image == [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert stats.images_without_boxes == sum(1 for i in coco.getImgIds() if not coco.getAnnIds(imgIds=[i]))
    assert stats.size_buckets == {
        "small": len(coco.getAnnIds(areaRng=[0, SMALL_AREA])),
        "medium": len(coco.getAnnIds(areaRng=[SMALL_AREA, MEDIUM_AREA])),
        "large": len(coco.getAnnIds(areaRng=[MEDIUM_AREA, 1e10])),
    }
    sizes = {}
    for im in coco.loadImgs(coco.getImgIds()):
        sizes[(im["width"], im["height"])] = sizes.get((im["width"], im["height"]), 0) + 1
    assert dict(stats.image_sizes) == sizes


def test_size_thresholds_are_cocos():
    assert SMALL_AREA == 32 * 32 and MEDIUM_AREA == 96 * 96
    assert size_bucket(32 * 32 - 0.01) == "small"
    assert size_bucket(32 * 32 + 0.01) == "medium"
    assert size_bucket(96 * 96 - 0.01) == "medium"
    assert size_bucket(96 * 96 + 0.01) == "large"


def test_area_falls_back_to_the_box(tmp_path):
    path = tmp_path / "instances_val.json"
    data = random_dataset(path, num_images=3)
    data["annotations"] = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "iscrowd": 0}]
    path.write_text(json.dumps(data))
    assert compute_stats(path).size_buckets == {"small": 0, "medium": 0, "large": 1}


def test_text_and_plot(tmp_path):
    train, val = tmp_path / "instances_train.json", tmp_path / "instances_val.json"
    random_dataset(train, seed=1)
    random_dataset(val, seed=2, num_images=10)
    all_stats = [compute_stats(train), compute_stats(val)]
    text = format_stats(all_stats)
    header = text.splitlines()[0].split()
    assert header == ["train", "val"]
    images_row = next(line for line in text.splitlines() if line.startswith("images "))
    assert images_row.split()[1:] == ["40", "10"]
    for name in CLASSES:
        assert any(line.startswith(name) for line in text.splitlines())
    png = plot_stats(all_stats, tmp_path / "plots" / "stats.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 500


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        compute_stats(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"x\.json.*detr data check"):
        compute_stats(tmp_path / "x.json")
