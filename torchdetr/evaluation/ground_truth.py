"""COCO ground truth for evaluation: an annotation file read, checked and indexed by pycocotools.

(The checks here are to be replaced by the one COCO validator of the data layer.)
"""

from __future__ import annotations

from pathlib import Path

from pycocotools.coco import COCO

from .checks import CocoFormatError, check_box, check_iou_type, is_int, is_number, load_json, quiet, short


def _check_unique_ids(items: list, key: str, source: str) -> set[int]:
    ids: set[int] = set()
    for i, item in enumerate(items):
        where = f"{source}: {key}[{i}]"
        if not isinstance(item, dict):
            raise CocoFormatError(f"{where} is a {type(item).__name__}, expected an object")
        if "id" not in item:
            raise CocoFormatError(f"{where} has no 'id' (keys: {sorted(item)})")
        if not is_int(item["id"]):
            raise CocoFormatError(f"{where}: 'id' must be an integer, got {short(item['id'])}")
        if item["id"] in ids:
            raise CocoFormatError(f"{where}: duplicate id {item['id']}")
        ids.add(item["id"])
    return ids


def validate_coco_gt(dataset: object, source: str = "ground truth", iou_type: str = "bbox") -> None:
    """Check that a COCO annotation dict can be evaluated; raise :class:`CocoFormatError` naming the fault.

    Needs ``images`` (unique integer ids; ``height``/``width`` for segm), ``categories`` (unique ids) and
    ``annotations`` (unique ids, known ``image_id``/``category_id``, ``area``, ``bbox`` [x, y, w, h],
    ``segmentation`` for segm).
    """
    check_iou_type(iou_type)
    if not isinstance(dataset, dict):
        raise CocoFormatError(f"{source}: expected a COCO annotation object (a dict), got {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise CocoFormatError(f"{source}: not a COCO annotation file: no {key!r} (keys: {sorted(dataset)})")
        if not isinstance(dataset[key], list):
            raise CocoFormatError(f"{source}: {key!r} must be a list, got {type(dataset[key]).__name__}")
    image_ids = _check_unique_ids(dataset["images"], "images", source)
    category_ids = _check_unique_ids(dataset["categories"], "categories", source)
    _check_unique_ids(dataset["annotations"], "annotations", source)
    if iou_type == "segm":
        for i, img in enumerate(dataset["images"]):
            for key in ("height", "width"):
                if not is_int(img.get(key)) or img[key] <= 0:
                    raise CocoFormatError(
                        f"{source}: images[{i}] (id {img['id']}): {key!r} must be a positive integer for mask "
                        f"evaluation, got {short(img.get(key))}"
                    )
    for i, ann in enumerate(dataset["annotations"]):
        where = f"{source}: annotations[{i}] (id {ann['id']})"
        for key in ("image_id", "category_id", "area") + (("bbox",) if iou_type == "bbox" else ("segmentation",)):
            if key not in ann:
                raise CocoFormatError(f"{where} has no {key!r} (keys: {sorted(ann)})")
        if not is_int(ann["image_id"]) or ann["image_id"] not in image_ids:
            raise CocoFormatError(f"{where}: image_id {short(ann['image_id'])} is not in 'images'")
        if not is_int(ann["category_id"]) or ann["category_id"] not in category_ids:
            raise CocoFormatError(f"{where}: category_id {short(ann['category_id'])} is not in 'categories'")
        if not is_number(ann["area"]) or ann["area"] < 0:
            raise CocoFormatError(f"{where}: 'area' must be a finite number >= 0, got {short(ann['area'])}")
        if "bbox" in ann:
            check_box(ann["bbox"], where)


def load_coco_gt(ann_file: str | Path, iou_type: str = "bbox") -> COCO:
    """Read and validate a COCO annotation file; returns a pycocotools ``COCO``."""
    dataset = load_json(ann_file, "annotation file")
    validate_coco_gt(dataset, str(ann_file), iou_type)
    coco = COCO()
    coco.dataset = dataset
    with quiet():
        coco.createIndex()
    return coco
