"""COCO results: model predictions (tensors) converted to the COCO results format, and results files checked.

A COCO result is ``{"image_id", "category_id", "bbox": [x, y, w, h] | "segmentation": RLE, "score"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from torch import Tensor
from torchvision.ops import box_convert

from .checks import CocoFormatError, check_box, check_iou_type, is_int, is_number, short

MASK_THRESHOLD = 0.5  # mask values above this are foreground


def boxes_to_coco_results(image_id: int, scores: Tensor, labels: Tensor, boxes: Tensor) -> list[dict[str, Any]]:
    """COCO box results of one image.

    ``scores`` [N], ``labels`` [N] (category ids), ``boxes`` [N, 4] as (x1, y1, x2, y2) pixels.
    Returns N dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
    """
    xywh = box_convert(boxes.detach().cpu(), in_fmt="xyxy", out_fmt="xywh").tolist()
    return [
        {"image_id": image_id, "category_id": label, "bbox": box, "score": score}
        for label, box, score in zip(labels.detach().cpu().tolist(), xywh, scores.detach().cpu().tolist())
    ]


def encode_masks(masks: Tensor) -> list[dict[str, Any]]:
    """Compressed RLEs (``{"size": [H, W], "counts": str}``) of binary masks [N, 1, H, W] or [N, H, W].

    Values above 0.5 are foreground (uint8 0/1 or 0/255, bool and probabilities all work).
    """
    masks = masks.detach().cpu()
    if masks.dim() == 4:
        masks = masks[:, 0]
    binary = (masks > MASK_THRESHOLD).numpy().astype(np.uint8)  # [N, H, W]
    rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # expects [H, W, N]
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def predictions_to_coco_results(
    predictions: Mapping[int, Mapping[str, Tensor]], iou_type: str, image_sizes: Mapping[int, tuple[int, int]] | None = None
) -> dict[int, list[dict[str, Any]]]:
    """Convert model predictions to COCO results, per image.

    ``predictions``: image id → ``scores`` [N], ``labels`` [N] (category ids), ``boxes`` [N, 4] (x1, y1, x2, y2
    pixels of the original image) and, for ``iou_type="segm"``, ``masks`` [N, 1, H, W]. ``image_sizes``
    (image id → (H, W)), when given, is checked against the mask size. Segm results carry no ``bbox``
    (as in the original DETR), so pycocotools derives box and area from the mask.
    """
    check_iou_type(iou_type)
    out: dict[int, list[dict[str, Any]]] = {}
    for key, pred in predictions.items():
        image_id = int(key)
        where = f"predictions for image {image_id}"
        for name in ("scores", "labels", "boxes") + (("masks",) if iou_type == "segm" else ()):
            if name not in pred:
                extra = " (needed for iou_type 'segm')" if name == "masks" else ""
                raise CocoFormatError(f"{where} have no {name!r}{extra}; keys: {sorted(pred)}")
        scores, labels, boxes = pred["scores"], pred["labels"], pred["boxes"]
        n = scores.shape[0] if scores.dim() == 1 else -1
        if n < 0 or labels.shape != (n,) or boxes.shape != (n, 4):
            raise CocoFormatError(
                f"{where}: expected scores [N], labels [N], boxes [N, 4], got {tuple(scores.shape)}, "
                f"{tuple(labels.shape)}, {tuple(boxes.shape)}"
            )
        if labels.is_floating_point():
            raise CocoFormatError(f"{where}: labels must be integer category ids, got dtype {labels.dtype}")
        if iou_type == "bbox":
            out[image_id] = boxes_to_coco_results(image_id, scores, labels, boxes)
            continue
        masks = pred["masks"]
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3 or masks.shape[0] != n:
            raise CocoFormatError(f"{where}: expected masks [N, 1, H, W] with N = {n}, got {tuple(pred['masks'].shape)}")
        size = (int(masks.shape[1]), int(masks.shape[2]))
        if image_sizes is not None and image_id in image_sizes and size != tuple(image_sizes[image_id]):
            raise CocoFormatError(
                f"{where}: masks are {size[0]}x{size[1]} (HxW) but the ground-truth image is "
                f"{image_sizes[image_id][0]}x{image_sizes[image_id][1]}; masks must be at the original image size"
            )
        rles = encode_masks(masks) if n else []
        out[image_id] = [
            {"image_id": image_id, "category_id": label, "segmentation": rle, "score": score}
            for label, rle, score in zip(labels.detach().cpu().tolist(), rles, scores.detach().cpu().tolist())
        ]
    return out


def _check_segmentation(seg: object, size: tuple[int, int] | None, where: str) -> dict[str, Any]:
    """A results ``segmentation`` (RLE, uncompressed RLE or polygons) as a compressed RLE with str counts."""
    try:
        if isinstance(seg, dict):
            if "size" not in seg or "counts" not in seg:
                raise CocoFormatError(f"{where}: an RLE 'segmentation' needs 'size' and 'counts', got keys {sorted(seg)}")
            rle_size = seg["size"]
            if not (isinstance(rle_size, list | tuple) and len(rle_size) == 2 and all(is_int(v) for v in rle_size)):
                raise CocoFormatError(f"{where}: RLE 'size' must be [height, width], got {short(rle_size)}")
            if size is not None and tuple(rle_size) != size:
                raise CocoFormatError(
                    f"{where}: RLE size {list(rle_size)} differs from the image's [height, width] {list(size)}"
                )
            if isinstance(seg["counts"], list):  # uncompressed RLE
                rle = mask_util.frPyObjects(seg, rle_size[0], rle_size[1])
            elif isinstance(seg["counts"], str | bytes):
                rle = {"size": list(rle_size), "counts": seg["counts"]}
                mask_util.area(rle)  # raises on malformed counts
            else:
                raise CocoFormatError(f"{where}: RLE 'counts' must be a string or a list, got {type(seg['counts']).__name__}")
        elif isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
            if size is None:
                raise CocoFormatError(f"{where}: polygon 'segmentation' needs the image's height and width")
            for poly in seg:
                if len(poly) < 6 or len(poly) % 2 or not all(is_number(v) for v in poly):
                    raise CocoFormatError(f"{where}: a polygon must be >= 3 (x, y) pairs of numbers, got {short(poly)}")
            rle = mask_util.merge(mask_util.frPyObjects(seg, size[0], size[1]))
        else:
            raise CocoFormatError(
                f"{where}: 'segmentation' must be an RLE {{'size', 'counts'}} or a list of polygons, got {short(seg)}"
            )
    except CocoFormatError:
        raise
    except Exception as err:  # pycocotools' C code raises bare exceptions on malformed input
        raise CocoFormatError(f"{where}: invalid 'segmentation' {short(seg)}: {err}") from None
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}


def validate_results(
    results: object, coco_gt: COCO, iou_type: str = "bbox", source: str = "results",
    ignore_unknown_categories: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Check COCO results against ``coco_gt``; raise :class:`CocoFormatError` naming the first bad entry.

    Each entry needs ``image_id`` (an image of ``coco_gt``), ``category_id`` (a category of ``coco_gt``),
    a finite ``score`` and, for bbox, ``bbox`` [x, y, w, h] (finite, w and h >= 0) or, for segm,
    ``segmentation`` (compressed or uncompressed RLE at the image size, or polygons). Returns fresh
    entries with only those keys (segmentations as compressed RLE) and the number of entries skipped
    for an unknown category (only when ``ignore_unknown_categories``; COCOeval would ignore them too).
    """
    check_iou_type(iou_type)
    if not isinstance(results, list):
        hint = ""
        if isinstance(results, dict) and "annotations" in results:
            hint = " (this looks like a COCO annotation file; a results file is a list of detections)"
        raise CocoFormatError(
            f"{source}: expected a JSON list of detections [{{'image_id', 'category_id', '{iou_type}', 'score'}}, ...], "
            f"got a {type(results).__name__}{hint}"
        )
    image_ids = set(coco_gt.imgs)
    category_ids = set(coco_gt.cats)
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    required = ("image_id", "category_id", geometry, "score")
    clean: list[dict[str, Any]] = []
    ignored = 0
    for i, det in enumerate(results):
        where = f"{source}: entry {i}"
        if not isinstance(det, dict):
            raise CocoFormatError(f"{where} is a {type(det).__name__}, expected an object with keys {list(required)}")
        missing = [k for k in required if k not in det]
        if missing:
            hint = ""
            if geometry in missing and iou_type == "bbox" and "segmentation" in det:
                hint = "; for mask results use iou_type 'segm'"
            raise CocoFormatError(f"{where} has no {missing} (keys: {sorted(det)}){hint}")
        image_id, category_id, score = det["image_id"], det["category_id"], det["score"]
        if not is_int(image_id):
            raise CocoFormatError(f"{where}: 'image_id' must be an integer, got {short(image_id)}")
        if image_id not in image_ids:
            raise CocoFormatError(f"{where}: image_id {image_id} is not an image of the ground truth")
        if not is_int(category_id):
            raise CocoFormatError(f"{where}: 'category_id' must be an integer, got {short(category_id)}")
        if category_id not in category_ids:
            if ignore_unknown_categories:
                ignored += 1
                continue
            known = sorted(category_ids)
            shown = known if len(known) <= 20 else [*known[:20], "..."]
            raise CocoFormatError(f"{where}: category_id {category_id} is not a category of the ground truth {shown}")
        if not is_number(score):
            raise CocoFormatError(f"{where}: 'score' must be a finite number, got {short(score)}")
        entry: dict[str, Any] = {"image_id": image_id, "category_id": category_id, "score": float(score)}
        if iou_type == "bbox":
            entry["bbox"] = check_box(det["bbox"], where)
        else:
            img = coco_gt.imgs[image_id]
            size = (img["height"], img["width"]) if "height" in img and "width" in img else None
            entry["segmentation"] = _check_segmentation(det["segmentation"], size, where)
        clean.append(entry)
    return clean, ignored
