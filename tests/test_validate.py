"""The one COCO annotation validator (torchdetr.data.validate): never raises, and every user agrees with it.

The fuzz tests put arbitrary JSON values (NaN, huge integers, nested lists, strings, ...) into arbitrary fields
of a valid file and check that the validator, the loader, the check, the statistics and evaluation's
ground-truth check end in their own report or a one-line user error, never in another exception.
"""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchdetr.data.check import check_dataset
from torchdetr.data.coco import coco_annotations_to_target, load_coco_api
from torchdetr.data.panoptic import load_panoptic_json
from torchdetr.data.stats import compute_stats
from torchdetr.data.validate import HINTS, Problem, Validation, validate_coco
from torchdetr.errors import DataError, MissingFileError
from torchdetr.evaluation.coco import CocoFormatError, validate_coco_gt


def valid_file() -> dict:
    """Two 40x30 images, three annotations (one crowd, all with segmentations), two categories."""
    def ann(aid: int, image_id: int, cat: int, bbox: list, crowd: int = 0) -> dict:
        x, y, w, h = bbox
        return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": w * h, "iscrowd": crowd,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]] if not crowd else
                {"size": [30, 40], "counts": [100, 20, 1080]}}
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b/c.png", "width": 40, "height": 30}],
        "annotations": [ann(1, 1, 1, [1, 2, 10, 8]), ann(2, 2, 2, [5, 5, 20, 20]), ann(3, 2, 1, [0, 0, 4, 4], crowd=1)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


# any JSON value, including what Python's json module reads beyond the standard: NaN, inf, huge integers
SCALARS = (st.none() | st.booleans() | st.integers() | st.just(10**400) | st.just(-(10**400))
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=6), inner, max_size=4), max_leaves=12)
FIELDS = {
    "images": ["id", "file_name", "width", "height"],
    "annotations": ["id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"],
    "categories": ["id", "name"],
}


@st.composite
def mutated_files(draw) -> object:
    """A valid file with one to three random changes: a field's value, a whole record, a list or the whole file."""
    content: object = valid_file()
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(content, dict):
            break
        where = draw(st.sampled_from(["field", "field", "field", "drop_field", "record", "list", "file"]))
        section = draw(st.sampled_from(sorted(FIELDS)))
        records = content.get(section)
        if where == "file":
            content = draw(JSON_VALUES)
        elif where == "list" or not isinstance(records, list) or not records:
            content[section] = draw(JSON_VALUES)
        else:
            index = draw(st.integers(0, len(records) - 1))
            if where == "record" or not isinstance(records[index], dict):
                records[index] = draw(JSON_VALUES)
            elif where == "drop_field":
                records[index].pop(draw(st.sampled_from(FIELDS[section])), None)
            else:
                key = draw(st.sampled_from(FIELDS[section]) | st.text(max_size=4))
                records[index][key] = draw(JSON_VALUES)
    return content


def _assert_report(validation: Validation, file: str) -> None:
    assert isinstance(validation, Validation)
    for problem in (*validation.errors, *validation.warnings):
        assert isinstance(problem, Problem) and problem.kind in HINTS and problem.file == file
        assert "\n" not in str(problem) and "\n" not in problem.one_line()
    assert all(not p.fatal for p in validation.warnings)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@FUZZ
@given(content=mutated_files(), masks=st.booleans(), read_images=st.booleans())
def test_validator_never_raises_on_any_json(content, masks, read_images):
    _assert_report(validate_coco(content, "fuzz.json", masks=masks, read_images=read_images), "fuzz.json")


@FUZZ
@given(content=mutated_files(), masks=st.booleans())
def test_loading_checking_stats_and_evaluation_only_raise_user_errors(tmp_path, content, masks):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(content))
    report = check_dataset(path, check_images=False)  # never raises
    assert report.ok == (not report.errors)
    try:
        coco = load_coco_api(path, masks=masks)
    except DataError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
    else:  # what the loader accepts, the rest of loading handles: targets for every image
        for image_id, info in coco.imgs.items():
            size = (info.get("height"), info.get("width"))
            height, width = size if all(isinstance(v, int) and 0 < v < 10**5 for v in size) else (30, 40)
            coco_annotations_to_target(coco.imgToAnns[image_id], image_id, height, width, return_masks=masks)
    try:
        compute_stats(path)
    except DataError as err:
        assert "detr data check" in str(err)
    for iou_type in ("bbox", "segm"):
        try:
            validate_coco_gt(copy.deepcopy(content), str(path), iou_type)
        except CocoFormatError as err:
            assert str(err).startswith(f"{path}: ")


# ------------------------------------------------------------------ what is found, and where
def _first(content: object, **options) -> Problem | None:
    return validate_coco(content, "f.json", **options).first()


@pytest.mark.parametrize(("change", "kind", "message"), [
    (lambda d: d["annotations"][1].update(bbox=[1, 2, 3, math.nan]), "non_finite",
     r"annotations\[1\] \(id 2\): 'bbox' \[1, 2, 3, nan\] is not finite"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, 10**400, 4]), "non_finite", r"annotations\[1\] \(id 2\): 'bbox'"),
    (lambda d: d["annotations"][0].update(image_id=[1]), "unknown_image",
     r"annotations\[0\] \(id 1\): image_id \[1\] is not in 'images'"),
    (lambda d: d["annotations"][0].update(category_id="1"), "unknown_category",
     r"annotations\[0\] \(id 1\): category_id '1' is not in 'categories' \(ids \[1, 2\]\)"),
    (lambda d: d["annotations"][2].update(iscrowd="yes"), "bad_record", r"annotations\[2\] \(id 3\): 'iscrowd' must be 0 or 1"),
    (lambda d: d["annotations"][2].pop("iscrowd"), "missing_field", r"annotations\[2\] \(id 3\) has no 'iscrowd'"),
    (lambda d: d["annotations"][0].update(bbox=[5, 5, 10, -2]), "bad_box_size", r"'bbox' \[5, 5, 10, -2\] has a negative"),
    (lambda d: d["annotations"][0].update(area=-1), "bad_record", r"'area' must be a finite number >= 0, got -1"),
    (lambda d: d["images"].append({"id": 2, "file_name": "x.png"}), "duplicate_image_id",
     r"images\[2\]: duplicate id 2 \(also images\[1\]\)"),
    (lambda d: d["categories"].append({"id": -1, "name": "neg"}), "bad_record",
     r"categories\[2\]: 'id' must be an integer >= 0, got -1"),
    (lambda d: d.update(images={}), "not_coco", r"'images' must be a list, got a dict"),
])
def test_fatal_problems_name_entry_field_and_value(change, kind, message):
    data = valid_file()
    change(data)
    problem = _first(data)
    assert problem is not None and problem.kind == kind and problem.fatal
    assert problem.one_line().startswith("f.json: ")
    assert re.search(message, problem.message), problem.message


def test_non_fatal_errors_are_reported_but_do_not_stop_loading():
    data = valid_file()
    data["annotations"][0]["bbox"] = [1, 2, 0, 5]  # a click, not a box: dropped from the targets
    data["annotations"][1]["bbox"] = [100, 100, 5, 5]  # outside its 40x30 image
    data["images"][0]["width"] = "forty"  # the loader uses the file's size
    validation = validate_coco(data, "f.json")
    assert [p.kind for p in validation.errors] == ["bad_record", "bad_box_size", "box_outside_image", "no_annotations"]
    assert validation.first() is None  # nothing fatal
    assert _first(data, masks=True).message == "images[0] (id 1): 'width' must be a positive integer for masks, got 'forty'"


def test_file_names_are_fatal_only_when_pictures_are_read():
    data = valid_file()
    data["images"][1]["file_name"] = "../outside.png"
    assert _first(data) is None  # evaluation needs no pictures
    assert _first(data, read_images=True).kind == "unsafe_file_name"


@pytest.mark.parametrize(("segmentation", "message"), [
    ("oops", r"'segmentation' must be polygons or an RLE, got 'oops'"),
    ([[1, 2, 3]], r"a polygon must be a list of finite x, y numbers, got \[1, 2, 3\]"),
    ({"size": [10, 10], "counts": "abc"}, r"RLE size \[10, 10\] differs from the image's \[height, width\] \[30, 40\]"),
    ({"size": [30, 40], "counts": [1, -2]}, r"RLE 'counts' must be a string or a list of run lengths"),
])
def test_segmentations_are_checked_when_masks_are_needed(segmentation, message):
    data = valid_file()
    data["annotations"][0]["segmentation"] = segmentation
    assert _first(data) is None
    problem = _first(data, masks=True)
    assert problem.kind == "bad_segmentation"
    assert re.search(message, problem.message), problem.message


def test_loader_evaluation_and_check_report_the_same_problem(tmp_path):
    data = valid_file()
    data["annotations"][1]["category_id"] = 9
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    expected = f"{path}: annotations[1] (id 2): category_id 9 is not in 'categories' (ids [1, 2])"
    with pytest.raises(DataError) as loading:
        load_coco_api(path)
    with pytest.raises(CocoFormatError) as evaluation:
        validate_coco_gt(data, str(path))
    assert str(loading.value) == str(evaluation.value) == expected
    (problem,) = [p for p in check_dataset(path, check_images=False).errors if p.kind == "unknown_category"]
    assert problem.one_line() == expected and problem.annotation_ids == (2,) and problem.image_ids == (2,)


def test_missing_area_is_filled_for_training_and_refused_by_evaluation(tmp_path):
    data = valid_file()
    del data["annotations"][0]["area"]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    assert load_coco_api(path).anns[1]["area"] == 80.0  # 10 x 8 from the box
    with pytest.raises(CocoFormatError, match=r"annotations\[0\] \(id 1\) has no 'area'"):
        validate_coco_gt(data, str(path))
    assert [p.kind for p in check_dataset(path, check_images=False).warnings] == ["missing_area"]


def test_valid_file_has_no_problems():
    validation = validate_coco(valid_file(), "f.json", masks=True, read_images=True)
    assert not validation.errors and not validation.warnings
    assert validation.categories == {1: "cat", 2: "dog"} and set(validation.images) == {1, 2}
    assert validation.boxes_per_category == {1: 1, 2: 1}  # the crowd box is not counted


@pytest.mark.parametrize("load", [load_coco_api, load_panoptic_json])
def test_loaders_refuse_a_missing_or_unreadable_file_in_one_line(tmp_path, load):
    """Both strict loaders read the file through validate.load_coco_json: missing → MissingFileError, a folder or
    broken JSON → DataError, each naming the file."""
    with pytest.raises(MissingFileError, match=r"annotation file not found: .*nowhere\.json$"):
        load(tmp_path / "nowhere.json")
    with pytest.raises(MissingFileError, match="not found"):
        load(tmp_path)  # a folder is not the file
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match=r"broken\.json.*not a valid JSON file"):
        load(tmp_path / "broken.json")
