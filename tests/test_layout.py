"""The one dataset-layout rule (torchdetr.data.layout): training, check, stats and convert agree on every layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdetr.data.layout import (
    find_splits,
    generic_split_files,
    images_dir_for,
    resolve_coco_layout,
    resolve_split,
    split_name,
)
from torchdetr.errors import DataError, MissingFileError

# layout name → (folders to create, annotation files to create, expected image folder of the "val" split)
LAYOUTS: dict[str, tuple[list[str], list[str], str]] = {
    "generic": (["images"], ["instances_train.json", "instances_val.json"], "images"),
    "generic, one folder per split": (["images/train", "images/val"], ["instances_train.json", "instances_val.json"],
                                      "images/val"),
    "coco 2017": (["train2017", "val2017"], ["instances_train2017.json", "instances_val2017.json"], "val2017"),
    "coco 2017 under images/ (Ultralytics)": (["images/train2017", "images/val2017"],
                                              ["instances_train2017.json", "instances_val2017.json"], "images/val2017"),
    "coco 2017 names, one images/ folder": (["images"], ["instances_val2017.json"], "images"),
    "both: coco 2017 wins": (["images", "val2017"], ["instances_val.json", "instances_val2017.json"], "val2017"),
}


def _make(root: Path, folders: list[str], ann_files: list[str]) -> Path:
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for name in ann_files:
        (root / "annotations" / name).write_text("{}")
    return root


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_user_of_the_layout_resolves_the_same_folders(tmp_path, layout):
    folders, ann_files, val_images = LAYOUTS[layout]
    root = _make(tmp_path, folders, ann_files)
    resolved = resolve_split(root, "val")  # training and evaluation
    found = find_splits(root)["val"]  # detr data check / stats on the folder
    assert resolved == found
    assert resolved.images_dir == root / val_images
    assert images_dir_for(resolved.ann_file) == root / val_images  # detr data check on one annotation file
    assert resolve_coco_layout(root, "val") == (resolved.images_dir, resolved.ann_file)
    assert resolved.ann_file.name == ("instances_val2017.json" if "2017" in layout else "instances_val.json")


def test_split_names_and_order(tmp_path):
    root = _make(tmp_path, ["images"], ["instances_zoo.json", "instances_val2017.json", "instances_train.json",
                                        "instances_test.json"])
    assert list(find_splits(root)) == ["train", "val", "test", "zoo"]
    assert split_name(Path("instances_val2017.json")) == "val" and split_name(Path("instances_2017.json")) == "2017"
    files = generic_split_files(root, "train")  # where detr data convert writes
    assert files.ann_file == find_splits(root)["train"].ann_file and files.images_dir == root / "images"


def test_missing_pieces_are_user_errors_naming_what_was_looked_for(tmp_path):
    with pytest.raises(MissingFileError, match="nowhere"):
        resolve_split(tmp_path / "nowhere", "train")
    with pytest.raises(MissingFileError, match="nowhere"):
        find_splits(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a folder"):
        find_splits(tmp_path / "file")
    with pytest.raises(DataError, match=r"instances_train\.json"):
        find_splits(tmp_path)
    _make(tmp_path / "no_images", [], ["instances_val.json"])  # annotations but no image folder
    with pytest.raises(MissingFileError, match=r"no 'val' split .* holds: annotations/"):
        resolve_split(tmp_path / "no_images", "val")
    assert images_dir_for(tmp_path / "no_images" / "annotations" / "instances_val.json") is None
