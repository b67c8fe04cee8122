"""Dataset checker: a corpus of deliberately broken datasets, one per problem kind, each found with its location."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, require
from torchdetr.data.check import HINTS, check_coco_folder, check_dataset
from torchdetr.data.coco import implied_num_classes, load_coco_api
from torchdetr.data.io import ORIENTATION_TAG
from torchdetr.errors import DataError, MissingFileError

W, H = 40, 30


def base_data() -> dict:
    """A valid dataset: 3 images of 40x30 (the third without boxes), 2 balanced categories."""
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in (1, 2, 3)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, W, H], "area": W * H, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [30, 20, 10, 10], "area": 100, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def write_dataset(root: Path, data: dict | str, split: str = "train") -> tuple[Path, Path]:
    """Generic layout under ``root``; ``data`` may be raw text (for broken JSON). Returns (ann_file, images_dir)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in (1, 2, 3):
        if not (images / f"{i}.png").exists():
            Image.new("RGB", (W, H), (i * 60, 0, 0)).save(images / f"{i}.png")
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(data if isinstance(data, str) else json.dumps(data))
    return ann_file, images


def ann(data: dict, aid: int) -> dict:
    return next(a for a in data["annotations"] if a["id"] == aid)


# --- mutations: each breaks the base dataset in one way ------------------------------------------------
def _bbox(aid: int, bbox: list) -> Callable[[dict, Path], None]:
    def mutate(data: dict, root: Path) -> None:
        ann(data, aid)["bbox"] = bbox
    return mutate


def _set(section: str, index: int, key: str, value) -> Callable[[dict, Path], None]:
    def mutate(data: dict, root: Path) -> None:
        data[section][index][key] = value
    return mutate


def _drop_key(aid: int, key: str) -> Callable[[dict, Path], None]:
    def mutate(data: dict, root: Path) -> None:
        del ann(data, aid)[key]
    return mutate


def _exif_sideways(data: dict, root: Path) -> None:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # stored 30x40, shown upright as 40x30 = the JSON size
    Image.new("RGB", (H, W)).save(root / "images" / "2.png", exif=exif.tobytes())


def _sixteen_bit(data: dict, root: Path) -> None:
    Image.fromarray(np.full((H, W), 4000, dtype=np.uint16)).save(root / "images" / "2.png")  # a 16-bit PNG


def _imbalance(data: dict, root: Path) -> None:
    data["annotations"] += [{"id": 100 + i, "image_id": 3, "category_id": 1, "bbox": [i % 30, 1, 5, 5], "area": 25,
                             "iscrowd": 0} for i in range(41)]  # cat 43 vs dog 2


def _sparse(data: dict, root: Path) -> None:
    data["categories"][1]["id"] = 1000
    for a in data["annotations"]:
        if a["category_id"] == 2:
            a["category_id"] = 1000


# (kind, mutation, expected image ids, annotation ids, category ids, file name that must appear in Problem.file)
ERROR_CASES = [
    ("unreadable_json", "{not json", (), (), (), "instances_train.json"),
    ("not_coco", {"images": [], "categories": []}, (), (), (), "instances_train.json"),
    ("bad_record", _bbox(2, "1,2,3,4"), (1,), (2,), (), "instances_train.json"),
    ("bad_record", _set("images", 1, "width", "forty"), (2,), (), (), "instances_train.json"),
    ("duplicate_image_id", _set("images", 1, "id", 1), (1,), (), (), "instances_train.json"),
    ("duplicate_annotation_id", lambda d, r: ann(d, 2).update(id=1), (), (1,), (), "instances_train.json"),
    ("duplicate_category_id", lambda d, r: d["categories"].append({"id": 2, "name": "bird"}), (), (), (2,),
     "instances_train.json"),
    ("unknown_image", lambda d, r: ann(d, 3).update(image_id=99), (), (3,), (), "instances_train.json"),
    ("unknown_category", lambda d, r: ann(d, 4).update(category_id=7), (2,), (4,), (), "instances_train.json"),
    ("unsafe_file_name", _set("images", 2, "file_name", "../3.png"), (3,), (), (), "instances_train.json"),
    ("unsafe_file_name", _set("images", 2, "file_name", "/etc/hostname"), (3,), (), (), "instances_train.json"),
    ("unsafe_file_name", _set("images", 2, "file_name", "C:\\data\\3.png"), (3,), (), (), "instances_train.json"),
    ("duplicate_file_name", _set("images", 2, "file_name", "1.png"), (1, 3), (), (), "instances_train.json"),
    ("missing_image", lambda d, r: (r / "images" / "2.png").unlink(), (2,), (), (), "2.png"),
    ("unreadable_image", lambda d, r: (r / "images" / "2.png").write_bytes(b"\x89PNG garbage"), (2,), (), (), "2.png"),
    ("size_mismatch", _set("images", 1, "width", W + 1), (2,), (), (), "2.png"),
    ("non_finite", _bbox(2, [1, math.nan, 3, 4]), (1,), (2,), (), "instances_train.json"),
    ("non_finite", _bbox(2, [1, 2, math.inf, 4]), (1,), (2,), (), "instances_train.json"),
    ("bad_box_size", _bbox(2, [1, 1, 0, 5]), (1,), (2,), (), "instances_train.json"),
    ("bad_box_size", _bbox(2, [10, 10, 5, -3]), (1,), (2,), (), "instances_train.json"),  # x2, y2 taken for w, h
    ("box_outside_image", _bbox(4, [W + 5, 5, 5, 5]), (2,), (4,), (), "instances_train.json"),
    ("missing_field", _drop_key(1, "iscrowd"), (1,), (1,), (), "instances_train.json"),
    ("no_images", lambda d, r: d.update(images=[], annotations=[]), (), (), (), "instances_train.json"),
    ("no_annotations", lambda d, r: d.update(annotations=[]), (), (), (), "instances_train.json"),
    ("no_annotations", lambda d, r: [a.update(iscrowd=1) for a in d["annotations"]], (), (), (), "instances_train.json"),
    ("no_categories", lambda d, r: d.update(categories=[]), (), (), (), "instances_train.json"),
]

WARNING_CASES = [
    ("sparse_category_ids", _sparse, (), (), (1, 1000), "instances_train.json"),
    ("duplicate_category_name", _set("categories", 1, "name", "cat"), (), (), (1, 2), "instances_train.json"),
    ("exif_orientation", _exif_sideways, (2,), (), (), "2.png"),
    ("high_bit_depth", _sixteen_bit, (2,), (), (), "2.png"),
    ("box_partly_outside", _bbox(4, [35, 5, 10, 5]), (2,), (4,), (), "instances_train.json"),
    ("missing_area", _drop_key(1, "area"), (1,), (1,), (), "instances_train.json"),
    ("unused_category", lambda d, r: d["categories"].append({"id": 3, "name": "bird"}), (), (), (3,),
     "instances_train.json"),
    ("class_imbalance", _imbalance, (), (), (1, 2), "instances_train.json"),
]


def build(tmp_path: Path, mutation) -> tuple[Path, Path]:
    data = base_data()
    ann_file, images = write_dataset(tmp_path, "")
    if isinstance(mutation, (str, dict)):
        data = mutation
    else:
        mutation(data, tmp_path)
    ann_file.write_text(data if isinstance(data, str) else json.dumps(data))
    return ann_file, images


def find(problems, kind):
    found = [p for p in problems if p.kind == kind]
    assert found, f"no {kind} in {[str(p) for p in problems]}"
    return found[0]


def test_valid_dataset_has_no_problems(tmp_path):
    ann_file, images = write_dataset(tmp_path, base_data())
    report = check_dataset(ann_file, images)
    assert report.ok and not report.warnings, report.format()
    assert report.info["images"] == 3 and report.info["annotations"] == 4
    assert report.info["images_without_annotations"] == 1  # fine, only counted
    assert report.info["num_classes"] == 3 and report.info["images_checked"]
    assert report.info["boxes_per_category"] == {"cat": 2, "dog": 2}


@pytest.mark.parametrize(("kind", "mutation", "image_ids", "annotation_ids", "category_ids", "file"), ERROR_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(ERROR_CASES)])
def test_each_error_is_found_with_its_location(tmp_path, kind, mutation, image_ids, annotation_ids, category_ids, file):
    ann_file, images = build(tmp_path, mutation)
    report = check_dataset(ann_file, images)
    assert not report.ok
    problem = find(report.errors, kind)
    assert problem.image_ids == image_ids
    assert problem.annotation_ids == annotation_ids
    assert problem.category_ids == category_ids
    assert Path(problem.file).name == file
    assert kind in HINTS
    assert kind in report.format()
    if kind in ("bad_record", "unsafe_file_name", "missing_image", "size_mismatch"):  # reported once, not per box
        assert not any(p.kind == "unknown_image" for p in report.errors), report.format()


@pytest.mark.parametrize(("kind", "mutation", "image_ids", "annotation_ids", "category_ids", "file"), WARNING_CASES,
                         ids=[c[0] for c in WARNING_CASES])
def test_each_warning_is_found_and_does_not_fail(tmp_path, kind, mutation, image_ids, annotation_ids, category_ids, file):
    ann_file, images = build(tmp_path, mutation)
    report = check_dataset(ann_file, images)
    assert report.ok, report.format()
    problem = find(report.warnings, kind)
    assert (problem.image_ids, problem.annotation_ids, problem.category_ids) == (image_ids, annotation_ids, category_ids)
    assert Path(problem.file).name == file


def test_sparse_ids_say_which_num_classes_they_imply(tmp_path):
    ann_file, images = build(tmp_path, _sparse)
    report = check_dataset(ann_file, images)
    assert report.info["num_classes"] == 1001
    assert "num_classes = max id + 1 = 1001" in find(report.warnings, "sparse_category_ids").message


def test_check_reports_the_num_classes_that_training_infers(tmp_path):
    """A detection file with COCO panoptic categories (as panopticapi's panoptic2detection converter writes) trains a
    250-class head (the original's main.py for coco_panoptic, through implied_num_classes); the check says the same."""
    data = base_data()
    data["categories"] = [{"id": 1, "name": "person"}, {"id": 92, "name": "banner"}]
    for a in data["annotations"]:
        a["category_id"] = 92 if a["category_id"] == 2 else 1
    ann_file, images = write_dataset(tmp_path, data)
    report = check_dataset(ann_file, images)
    assert report.info["num_classes"] == implied_num_classes(load_coco_api(ann_file)) == 250
    assert "num_classes = the original's for COCO panoptic categories = 250" in find(
        report.warnings, "sparse_category_ids").message


def test_coco_ids_from_zero_or_one_are_not_sparse(tmp_path):
    data = base_data()
    for c in data["categories"]:
        c["id"] -= 1
    for a in data["annotations"]:
        a["category_id"] -= 1
    ann_file, images = write_dataset(tmp_path, data)
    report = check_dataset(ann_file, images)
    assert report.ok and not report.warnings and report.info["num_classes"] == 2


def test_wrong_image_folder_gives_one_clear_error(tmp_path):
    ann_file, _ = write_dataset(tmp_path, base_data())
    (tmp_path / "elsewhere").mkdir()
    report = check_dataset(ann_file, tmp_path / "elsewhere")
    assert [p.kind for p in report.errors] == ["missing_image"]
    assert "none of the 3 image files" in report.errors[0].message
    assert report.errors[0].image_ids == (1, 2, 3)
    absent = check_dataset(ann_file, tmp_path / "nope")
    assert [p.kind for p in absent.errors] == ["missing_image"] and "nope" in absent.errors[0].message


def test_images_are_not_opened_when_asked(tmp_path):
    ann_file, images = build(tmp_path, lambda d, r: (r / "images" / "2.png").unlink())
    assert check_dataset(ann_file, images, check_images=False).ok
    assert not check_dataset(ann_file, images, check_images=True).ok


def test_image_folder_is_guessed_from_the_layout(tmp_path):
    ann_file, _ = build(tmp_path, _set("images", 1, "width", W + 1))
    report = check_dataset(ann_file)
    assert report.images_dir == tmp_path / "images"
    assert find(report.errors, "size_mismatch")


def test_format_groups_by_kind_and_truncates(tmp_path):
    def many_bad(data: dict, root: Path) -> None:
        data["annotations"] += [{"id": 200 + i, "image_id": 3, "category_id": 1, "bbox": [1, 1, 0, 1], "area": 0,
                                 "iscrowd": 0} for i in range(7)]
    ann_file, images = build(tmp_path, many_bad)
    report = check_dataset(ann_file, images)
    text = report.format(max_per_kind=3)
    assert text.splitlines()[0].startswith("instances_train.json: 7 errors, 0 warnings")
    assert "num_classes 3" in text.splitlines()[0]
    assert "bad_box_size (7): " + HINTS["bad_box_size"] in text
    assert "annotation 200" in text and "annotation 203" not in text and "... and 4 more" in text
    assert json.loads(json.dumps(report.to_json()))["errors"][0]["annotation_ids"] == [200]


def test_folder_in_both_layouts_and_split_overlap(tmp_path):
    generic = tmp_path / "generic"
    write_dataset(generic, base_data(), "train")
    val = base_data()
    val["images"], val["annotations"] = val["images"][:1], val["annotations"][:2]
    write_dataset(generic, val, "val")
    reports = check_coco_folder(generic)
    assert list(reports) == ["train", "val"]
    overlap = find(reports["val"].warnings, "split_overlap")
    assert overlap.image_ids == (1,) and reports["val"].ok

    coco2017 = tmp_path / "coco"
    for split in ("train", "val"):
        ann_file, images = write_dataset(coco2017 / "tmp", base_data())
        (coco2017 / "annotations").mkdir(parents=True, exist_ok=True)
        ann_file.rename(coco2017 / "annotations" / f"instances_{split}2017.json")
        images.rename(coco2017 / f"{split}2017")
    reports = check_coco_folder(coco2017)
    assert list(reports) == ["train", "val"]
    assert reports["val"].images_dir == coco2017 / "val2017" and reports["val"].ok


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(DataError, match=r"instances_train\.json"):
        check_coco_folder(tmp_path)
    with pytest.raises(MissingFileError, match="missing"):
        check_coco_folder(tmp_path / "missing")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(DataError, match="not a folder"):
        check_coco_folder(tmp_path / "file.json")


def test_bccd_passes(tmp_path):
    bccd = require(DATA / "bccd")
    reports = check_coco_folder(bccd)
    assert set(reports) == {"train", "val", "test"}
    for report in reports.values():
        assert report.ok, report.format()
        assert report.info["num_classes"] == 4 and report.info["images_checked"]
    # the counts the dataset's README gives
    assert (reports["train"].info["images"], reports["train"].info["annotations"]) == (205, 2804)
    assert reports["train"].info["boxes_per_category"] == {"Platelets": 209, "RBC": 2381, "WBC": 214}


def test_generic_layout_with_one_image_folder_per_split(tmp_path):
    ann_file, images = write_dataset(tmp_path, base_data(), "val")
    images.rename(tmp_path / "val")
    (tmp_path / "images").mkdir()
    (tmp_path / "val").rename(tmp_path / "images" / "val")
    report = check_coco_folder(tmp_path)["val"]
    assert report.images_dir == tmp_path / "images" / "val" and report.ok, report.format()
    assert check_dataset(ann_file).images_dir == tmp_path / "images" / "val"
