"""COCO panoptic data: layout rule, validator, ``detr data check`` of PNGs, the CocoPanoptic dataset.

Oracles: the official panoptic ground truth of two real COCO images (../shared), and panopticapi's own
conversion of those segments to COCO detection format (``panoptic_coco_detection_format.json``).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from tests.conftest import PANOPTIC_SAMPLE as SAMPLE
from tests.conftest import PANOPTIC_SAMPLE_JSON as SAMPLE_JSON
from tests.conftest import PANOPTIC_SAMPLE_PNGS as SAMPLE_PNGS
from tests.conftest import png_id_map, require
from tests.tiny import tiny_config
from torchdetr.cli import main as cli_main
from torchdetr.config import DETRConfig
from torchdetr.data.build import build_dataset
from torchdetr.data.check import check_coco_folder, check_dataset, check_panoptic_dataset
from torchdetr.data.coco import get_coco_api, implied_num_classes
from torchdetr.data.layout import resolve_panoptic_split
from torchdetr.data.panoptic import CocoPanoptic, load_panoptic_json, segment_bbox
from torchdetr.data.synthetic_panoptic import write_panoptic_folder
from torchdetr.data.transforms import make_transforms
from torchdetr.data.validate import validate_coco_panoptic
from torchdetr.errors import DataError, MissingFileError
from torchdetr.structures import id2rgb


def sample_dataset(**kwargs) -> CocoPanoptic:
    return CocoPanoptic(SAMPLE / "images", SAMPLE_PNGS, require(SAMPLE_JSON), **kwargs)


def png_ids(name: str) -> np.ndarray:
    return png_id_map(SAMPLE_PNGS / name)


# ----------------------------------------------------------------------------------------------
# The dataset on the real images
# ----------------------------------------------------------------------------------------------
def test_targets_are_the_segments_of_the_png():
    dataset = sample_dataset()
    content = json.loads(SAMPLE_JSON.read_text())
    assert dataset.ids == sorted(a["image_id"] for a in content["annotations"])
    for index, ann in enumerate(sorted(content["annotations"], key=lambda a: a["image_id"])):
        image, target = dataset[index]
        ids = png_ids(ann["file_name"])
        segments = ann["segments_info"]
        assert (image.height, image.width) == ids.shape
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(segments), *ids.shape)
        for k, seg in enumerate(segments):
            mask = ids == seg["id"]
            assert np.array_equal(target["masks"][k].numpy().astype(bool), mask)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            # the original's masks_to_boxes: x2, y2 are the last pixel's coordinates
            assert target["boxes"][k].tolist() == [cols[0], rows[0], cols[-1], rows[-1]]
        assert target["labels"].tolist() == [s["category_id"] for s in segments]
        assert target["iscrowd"].tolist() == [s["iscrowd"] for s in segments]  # crowd kept, as the original
        assert target["area"].tolist() == [s["area"] for s in segments]
        assert target["image_id"].item() == ann["image_id"] and target["orig_size"].tolist() == list(ids.shape)


def test_without_masks_the_target_has_boxes_only():
    _, target = sample_dataset(return_masks=False)[0]
    assert "masks" not in target and target["boxes"].shape == (18, 4)


def test_masks_move_with_the_image_through_the_transforms():
    torch.manual_seed(0)
    raw = sample_dataset()
    transformed = sample_dataset(transforms=make_transforms("val", 200))
    image, target = transformed[1]
    _, raw_target = raw[1]
    height, width = image.shape[-2:]
    expected = torch.nn.functional.interpolate(raw_target["masks"][None].float(), size=(height, width), mode="nearest")[0]
    assert target["masks"].dtype == torch.bool and torch.equal(target["masks"], expected.bool())


def test_segment_bbox_is_the_bbox_of_the_coco_panoptic_files(tmp_path):
    """The official ``bbox`` of every segment of the sample (50) is the oracle; without it the box comes from the PNG."""
    content = json.loads(require(SAMPLE_JSON).read_text())
    official = {}
    for ann in content["annotations"]:
        ids = png_ids(ann["file_name"])
        for seg in ann["segments_info"]:
            assert segment_bbox(ids == seg["id"]) == seg["bbox"]
            official[ann["image_id"], seg["category_id"], seg["area"]] = [float(v) for v in seg["bbox"]]
    assert len(official) == 50
    single = np.zeros((5, 7), dtype=bool)
    single[3, 2] = True
    assert segment_bbox(single) == [2, 3, 1, 1]  # one pixel: 1 x 1

    for ann in content["annotations"]:
        for seg in ann["segments_info"]:
            del seg["bbox"]
    (tmp_path / "no_bbox.json").write_text(json.dumps(content))
    measured = CocoPanoptic(SAMPLE / "images", SAMPLE_PNGS, tmp_path / "no_bbox.json", return_masks=False).coco
    assert {(a["image_id"], a["category_id"], a["area"]): a["bbox"] for a in measured.anns.values()} == official


def test_segments_as_coco_detection_match_panopticapi_conversion():
    """``.coco`` against panopticapi's converter output for the same images (ids aside)."""
    ours = sample_dataset().coco
    theirs = json.loads(require(SAMPLE / "annotations" / "panoptic_coco_detection_format.json").read_text())
    assert len(ours.anns) == len(theirs["annotations"]) == 50
    assert min(ours.anns) == 1  # COCOeval treats annotation id 0 as "unmatched"

    def key(a):
        return a["image_id"], a["category_id"], tuple(a["bbox"])

    by_key = {key(a): a for a in ours.anns.values()}
    for expected in theirs["annotations"]:
        mine = by_key[key(expected)]
        assert (mine["area"], mine["iscrowd"]) == (expected["area"], expected["iscrowd"])
        assert np.array_equal(mask_utils.decode(mine["segmentation"]), mask_utils.decode(expected["segmentation"]))


def test_num_classes_of_coco_panoptic_is_the_originals_250(tmp_path):
    assert implied_num_classes(sample_dataset()) == 250
    write_panoptic_folder(tmp_path, 2, 1, image_size=32)
    dataset = CocoPanoptic(tmp_path / "images", tmp_path / "panoptic", tmp_path / "annotations" / "panoptic_val.json")
    assert implied_num_classes(dataset) == 9  # max id + 1, as detection


def test_training_refuses_only_a_class_head_too_small_for_the_largest_category_id():
    """The inferred head is the original's 250 for COCO panoptic, but any head above the largest id (200 in
    the sample: stuff ids run to 200) fits the data; the message names that id, not 249."""
    from torchdetr.engine.datasets import resolve_num_classes
    from torchdetr.errors import ConfigError

    coco = get_coco_api(sample_dataset())
    largest = max(c["id"] for c in json.loads(SAMPLE_JSON.read_text())["categories"])
    assert resolve_num_classes(tiny_config(num_classes=None), coco).num_classes == 250
    assert resolve_num_classes(tiny_config(num_classes=largest + 1), coco).num_classes == largest + 1
    with pytest.raises(ConfigError, match=rf"has category id {largest}, so num_classes must be at least {largest + 1} "):
        resolve_num_classes(tiny_config(num_classes=largest), coco)


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------
def test_layouts(tmp_path):
    # the sample: annotations/panoptic_examples.json + annotations/panoptic_examples/ + images/
    files = resolve_panoptic_split(require(SAMPLE), "examples")
    assert (files.ann_file, files.png_dir, files.images_dir) == (SAMPLE_JSON, SAMPLE_PNGS, SAMPLE / "images")
    # the original DETR: --coco_path with val2017/, --coco_panoptic_path with annotations/ + panoptic_val2017/
    coco, panoptic = tmp_path / "coco", tmp_path / "coco_panoptic"
    (coco / "val2017").mkdir(parents=True)
    (panoptic / "annotations").mkdir(parents=True)
    (panoptic / "panoptic_val2017").mkdir()
    (panoptic / "annotations" / "panoptic_val2017.json").write_text("{}")
    files = resolve_panoptic_split(panoptic, "val", images_root=coco)
    assert (files.png_dir, files.images_dir) == (panoptic / "panoptic_val2017", coco / "val2017")
    with pytest.raises(MissingFileError, match=r"no 'train' panoptic split .* holds: annotations/, panoptic_val2017/$"):
        resolve_panoptic_split(panoptic, "train", images_root=coco)
    with pytest.raises(MissingFileError, match="no image folder"):
        resolve_panoptic_split(panoptic, "val")
    # the generic layout, through build_dataset
    write_panoptic_folder(tmp_path / "syn", 2, 1, image_size=32)
    cfg = DETRConfig(dataset_file="coco_panoptic", coco_path=str(tmp_path / "syn"), image_size=32, masks=True,
                     hidden_dim=128)
    dataset = build_dataset("train", cfg)
    assert isinstance(dataset, CocoPanoptic) and len(dataset) == 2 and dataset[0][1]["masks"].shape[0] > 0


# ----------------------------------------------------------------------------------------------
# Validation and checks
# ----------------------------------------------------------------------------------------------
def minimal_content() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}],
        "categories": [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}],
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [
            {"id": 5, "category_id": 1, "iscrowd": 0, "area": 4}, {"id": 300, "category_id": 2, "iscrowd": 0, "area": 8}]}],
    }


@pytest.mark.parametrize("change, kind, text", [
    (lambda c: c["categories"][0].pop("isthing"), "bad_record", "'isthing' must be 0 (stuff) or 1 (thing)"),
    (lambda c: c["annotations"][0].update(image_id=9), "unknown_image", "image_id 9 is not in 'images'"),
    (lambda c: c["annotations"].append(dict(c["annotations"][0])), "duplicate_panoptic_annotation", "second annotation"),
    (lambda c: c["annotations"][0]["segments_info"][1].update(id=5), "duplicate_segment_id", "id 5 is also"),
    (lambda c: c["annotations"][0]["segments_info"][0].update(id=0), "bad_segment_id", "0 is void"),
    (lambda c: c["annotations"][0]["segments_info"][0].update(category_id=7), "unknown_category", "category_id 7"),
    (lambda c: c["annotations"][0]["segments_info"][0].pop("iscrowd"), "missing_field", "'iscrowd' must be 0 or 1"),
    (lambda c: c["annotations"][0].update(file_name="../x.png"), "unsafe_file_name", "outside the panoptic folder"),
    (lambda c: c["annotations"][0].update(segments_info={}), "bad_record", "'segments_info' must be a list"),
])
def test_validator_reports_each_fatal_problem_in_one_line(tmp_path, change, kind, text):
    content = minimal_content()
    change(content)
    validation = validate_coco_panoptic(content, "pan.json")
    problem = validation.first()
    assert problem is not None and problem.kind == kind and text in problem.message
    path = tmp_path / "pan.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as err:
        load_panoptic_json(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_validator_accepts_the_real_sample():
    validation = validate_coco_panoptic(json.loads(require(SAMPLE_JSON).read_text()))
    assert not validation.errors and len(validation.annotations) == 2 and sum(validation.isthing.values()) == 80


def write_minimal(tmp_path: Path, id_map: np.ndarray, content: dict | None = None) -> Path:
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    (tmp_path / "panoptic").mkdir(exist_ok=True)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    Image.new("RGB", (4, 3)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(id2rgb(id_map)).save(tmp_path / "panoptic" / "a.png")
    ann = tmp_path / "annotations" / "panoptic_train.json"
    ann.write_text(json.dumps(content or minimal_content()))
    return ann


GOOD_MAP = np.array([[5, 5, 300, 300], [5, 5, 300, 300], [300, 300, 300, 300]])
STRAY_MAP = np.array([[5, 5, 300, 300], [5, 5, 300, 300], [300, 300, 300, 301]])  # one pixel of an unlisted id


@pytest.mark.parametrize("id_map, kind, text", [
    (STRAY_MAP, "segment_not_in_json", "301 (1 pixels)"),
    (np.where(GOOD_MAP == 5, 300, 300), "empty_segment", "segment 5 has no pixel"),
    (np.where(GOOD_MAP == 5, 0, 300), "empty_segment", "segment 5"),
    (np.zeros((2, 4), dtype=np.int64), "png_size_mismatch", "4x2"),
    (None, "missing_png", "segment PNG not found"),
])
def test_check_reads_the_pngs(tmp_path, id_map, kind, text):
    ann = write_minimal(tmp_path, GOOD_MAP if id_map is None else id_map)
    if id_map is None:
        (tmp_path / "panoptic" / "a.png").unlink()
    report = check_panoptic_dataset(ann)
    assert [p.kind for p in report.errors] == [kind] and text in str(report.errors[0]) + report.errors[0].file
    assert check_dataset(ann).errors[0].kind == kind  # a panoptic file is recognised by its content


def test_check_tells_a_size_mismatch_from_an_unreadable_png_by_the_sizes_not_the_message(tmp_path):
    """A folder whose name holds the words of the size message ("width x height") does not make a broken PNG a size
    mismatch, and the report of a real size mismatch stays one line naming both sizes."""
    root = tmp_path / "width x height"
    ann = write_minimal(root, GOOD_MAP)
    (root / "panoptic" / "a.png").write_bytes(b"not a png")
    report = check_panoptic_dataset(ann)
    assert [p.kind for p in report.errors] == ["unreadable_png"]
    write_minimal(root, np.zeros((2, 4), dtype=np.int64))
    report = check_panoptic_dataset(ann)
    assert [(p.kind, p.message) for p in report.errors] == [
        ("png_size_mismatch", "image 1: the segment PNG is 4x2 (width x height) but its image is 4x3")]


def test_check_of_a_good_panoptic_folder_and_its_warnings(tmp_path, capsys):
    content = minimal_content()
    content["annotations"][0]["segments_info"][0]["area"] = 3  # the PNG has 4 pixels
    write_minimal(tmp_path, GOOD_MAP, content)
    report = check_coco_folder(tmp_path)["train"]
    assert report.ok and [p.kind for p in report.warnings] == ["area_mismatch"]
    assert report.info["panoptic"] and report.info["annotations"] == 2 and report.info["num_classes"] == 3
    assert "1 image (0 without segments), 2 segments, 2 categories -> num_classes 3" in report.summary()
    assert cli_main(["data", "check", str(tmp_path)]) == 0
    assert "OK: no errors" in capsys.readouterr().out
    (tmp_path / "panoptic" / "a.png").unlink()
    assert cli_main(["data", "check", str(tmp_path / "annotations" / "panoptic_train.json")]) == 1
    assert "missing_png" in capsys.readouterr().out


def test_check_holds_one_id_map_per_thread_not_one_per_image(tmp_path, monkeypatch):
    """The PNG check reduces each id map to its pixel counts as it goes: a COCO-sized split (118k maps of 2.4 MB)
    must not be held in memory at once. Counts the id maps alive at any moment with weakref finalizers."""
    import threading
    import weakref

    from torchdetr.data import check as check_module

    num_images = 3 * check_module.HEADER_THREADS
    write_panoptic_folder(tmp_path, num_images, 0, image_size=32)
    alive, most, lock = [0], [0], threading.Lock()
    real_loader = check_module.load_segment_ids

    def forget() -> None:
        with lock:
            alive[0] -= 1

    def counting_loader(*args, **kwargs):
        id_map = real_loader(*args, **kwargs)
        with lock:
            alive[0] += 1
            most[0] = max(most[0], alive[0])
        weakref.finalize(id_map, forget)
        return id_map

    monkeypatch.setattr(check_module, "load_segment_ids", counting_loader)
    report = check_panoptic_dataset(tmp_path / "annotations" / "panoptic_train.json")
    assert report.ok and not report.warnings and report.info["annotations"] > num_images
    assert 1 <= most[0] <= check_module.HEADER_THREADS


def test_check_json_report_is_refused_inside_the_png_folder(tmp_path, capsys):
    """--json never writes into an input: the segment PNG folder is one, as the image folder is."""
    ann = write_minimal(tmp_path, GOOD_MAP)
    for target in (tmp_path / "panoptic" / "report.json", tmp_path / "images" / "report.json"):
        assert cli_main(["data", "check", str(ann), "--json", str(target)]) == 2
        assert "is inside the input folder" in capsys.readouterr().err and not target.exists()
    assert cli_main(["data", "check", str(tmp_path), "--json", str(tmp_path / "panoptic" / "report.json")]) == 2
    assert cli_main(["data", "check", str(ann), "--json", str(tmp_path / "report.json")]) == 0


def test_check_of_the_real_sample_has_no_errors():
    report = check_panoptic_dataset(require(SAMPLE_JSON))
    assert report.ok and report.info["pngs_checked"] and report.info["images_checked"]
    assert (report.info["things"], report.info["stuff"], report.info["annotations"]) == (80, 53, 50)


def test_training_start_refuses_a_broken_panoptic_dataset(tmp_path):
    write_panoptic_folder(tmp_path, 2, 1, image_size=32)
    victim = sorted((tmp_path / "panoptic").glob("val_*.png"))[0]
    shutil.copy(sorted((tmp_path / "panoptic").glob("train_*.png"))[0], victim)  # ids of another image
    from torchdetr.engine.datasets import DataCheckFailed, check_data

    cfg = DETRConfig(dataset_file="coco_panoptic", coco_path=str(tmp_path))
    check_data(cfg, ("train",))
    with pytest.raises(DataCheckFailed, match=r"segment_not_in_json|empty_segment"):
        check_data(cfg, ("val",))


def test_training_start_names_a_check_command_that_lists_the_errors(tmp_path, capsys):
    """The original's layout: images under --coco_path, panoptic files under --coco_panoptic_path. The command the
    refusal names must report the broken split (a check of --coco_path would not even find it)."""
    from torchdetr.engine.datasets import DataCheckFailed, check_data

    panoptic_root, coco_root = tmp_path / "coco_panoptic", tmp_path / "coco"
    write_panoptic_folder(panoptic_root, 2, 1, image_size=32)
    coco_root.mkdir()
    (panoptic_root / "images").rename(coco_root / "images")
    victim = sorted((panoptic_root / "panoptic").glob("val_*.png"))[0]
    shutil.copy(sorted((panoptic_root / "panoptic").glob("train_*.png"))[0], victim)  # ids of another image
    cfg = DETRConfig(dataset_file="coco_panoptic", coco_path=str(coco_root), coco_panoptic_path=str(panoptic_root))
    with pytest.raises(DataCheckFailed) as refused:
        check_data(cfg, ("val",))
    command = shlex.split(str(refused.value).split("`")[1])
    assert command[:3] == ["detr", "data", "check"]
    capsys.readouterr()
    assert cli_main(command[1:]) == 1
    kind = re.search(r"\((\w+)(?: and \d+ more error\(s\))? in the val data", str(refused.value)).group(1)
    assert kind in capsys.readouterr().out
