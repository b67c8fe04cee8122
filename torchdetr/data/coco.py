"""COCO-format detection data: annotation files, images, and the (image, target) pairs DETR trains on.

``CocoDetection`` behaves like ``torchvision.datasets.CocoDetection`` (a pycocotools ``COCO`` at
``.coco``, image ids in ``.ids``) followed by the original DETR's ``ConvertCocoPolysToMask``: a target
dict with ``boxes`` [N, 4] (x1, y1, x2, y2) in pixels clipped to the image, ``labels`` [N] (the file's
category ids, not remapped), ``image_id`` [1], ``area`` [N], ``iscrowd`` [N], ``orig_size`` and
``size`` [2] = (H, W), and ``masks`` [N, H, W] uint8 when asked for. Crowd annotations are left out
of the target (they stay in ``.coco`` for evaluation), as are boxes with no width or height after
clipping. Unlike pycocotools alone, a malformed file is reported as one error naming the file and the
entry at fault.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Sequence
from operator import index as as_index
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision.datasets import CocoDetection as _TorchvisionCocoDetection
from torchvision.datasets import VisionDataset
from torchvision.ops import box_convert, clip_boxes_to_image

from ..categories import category_names_from_coco, num_classes_for_category_ids
from ..errors import DataError, MissingFileError
from .io import load_rgb_image
from .layout import resolve_coco_layout
from .validate import load_coco_json, validate_coco

__all__ = [
    "CocoDetection", "category_ids", "category_names", "coco_annotations_to_target", "coco_from_dict", "get_coco_api",
    "implied_num_classes", "load_coco_api", "resolve_coco_layout", "segmentation_to_mask",
]


# ----------------------------------------------------------------------------------------------
# Annotation files
# ----------------------------------------------------------------------------------------------
def load_coco_api(ann_file: str | Path, *, masks: bool = False) -> COCO:
    """Read and check a COCO instances JSON file; return an indexed pycocotools ``COCO``.

    The file is checked by the one validator (:func:`.validate.validate_coco`; with ``masks`` the
    segmentations too); an annotation without ``area`` gets its box area (COCO evaluation needs one).

    Raises:
        MissingFileError: the file does not exist.
        DataError: not JSON, or the first fatal problem of the file, naming the file, the entry and the value.
    """
    content = load_coco_json(ann_file)
    validate_coco(content, str(ann_file), masks=masks, read_images=True).raise_first()
    fill_missing_areas(content)
    return coco_from_dict(content)


def fill_missing_areas(data: dict[str, Any]) -> None:
    """Give every annotation without ``area`` the area of its ``bbox`` (w * h, negative sides as 0), in place."""
    for ann in data["annotations"]:
        if "area" not in ann:
            width, height = ann["bbox"][2:]
            ann["area"] = float(max(width, 0) * max(height, 0))


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """An indexed pycocotools ``COCO`` over an in-memory annotation dict (no printing)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# ----------------------------------------------------------------------------------------------
# Images and targets
# ----------------------------------------------------------------------------------------------
def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygons, uncompressed or compressed RLE) to a uint8 [H, W] mask.

    Polygons are united (as the original ``convert_coco_poly_to_mask``); polygons with fewer than three
    points are ignored (pycocotools would read a 4-number list as a box).
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise DataError(f"RLE segmentation of size {segmentation['size']} on an image of size {[height, width]}")
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
    else:
        raise DataError(f"unknown segmentation format: {type(segmentation).__name__}")
    with warnings.catch_warnings():  # pycocotools' decode trips a numpy 2 DeprecationWarning about __array__
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def coco_annotations_to_target(
    annotations: Sequence[dict[str, Any]],
    image_id: int,
    height: int,
    width: int,
    return_masks: bool = False,
    source: str = "annotations",
) -> dict[str, Tensor]:
    """The original ``ConvertCocoPolysToMask``: COCO annotations of one image → DETR target dict.

    Returns ``boxes`` float32 [N, 4] (x1, y1, x2, y2) pixels clipped to the ``height`` x ``width`` image,
    ``labels`` int64 [N] (category ids), ``image_id`` int64 [1], ``area`` float32 [N] (the file's area),
    ``iscrowd`` int64 [N], ``orig_size``/``size`` int64 [2] = (H, W), and with ``return_masks`` ``masks``
    uint8 [N, H, W]. Crowd annotations and boxes with no width or height after clipping are left out.
    """
    objects = [a for a in annotations if not a.get("iscrowd", 0)]
    xywh = torch.tensor([a["bbox"] for a in objects], dtype=torch.float32).reshape(-1, 4)
    boxes = clip_boxes_to_image(box_convert(xywh, "xywh", "xyxy"), (height, width))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    target: dict[str, Tensor] = {
        "boxes": boxes[keep],
        "labels": torch.tensor([a["category_id"] for a in objects], dtype=torch.int64)[keep],
        "image_id": torch.tensor([image_id], dtype=torch.int64),
        "area": torch.tensor([float(a["area"]) for a in objects], dtype=torch.float32)[keep],
        "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
        "orig_size": torch.tensor([height, width], dtype=torch.int64),
        "size": torch.tensor([height, width], dtype=torch.int64),
    }
    if return_masks:
        kept = [a for a, k in zip(objects, keep.tolist()) if k]
        masks = np.zeros((len(kept), height, width), dtype=np.uint8)
        for i, ann in enumerate(kept):
            if "segmentation" not in ann:
                raise DataError(f"{source}: annotation {ann.get('id')} has no 'segmentation'; masks need polygons or RLE")
            try:
                masks[i] = segmentation_to_mask(ann["segmentation"], height, width)
            except ValueError as err:
                raise DataError(f"{source}: annotation {ann.get('id')}: {err}") from None
        target["masks"] = torch.from_numpy(masks)
    return target


Transforms = Callable[[PIL.Image.Image, dict[str, Tensor]], tuple[Any, Any]]


class CocoDetection(_TorchvisionCocoDetection):
    """A COCO-format detection dataset: ``dataset[i]`` → ``(image, target)``.

    ``img_folder`` holds the images (``file_name`` is relative to it), ``ann_file`` the COCO instances
    JSON. Without ``transforms`` the image is an RGB PIL image and the target is in pixels (see
    ``coco_annotations_to_target``); ``transforms`` is called as ``transforms(image, target)``.

    Images are read by the one loader, :func:`.io.load_rgb_image`: 8-bit RGB (grayscale, palette, alpha,
    16-bit… by its rules) and upright according to their EXIF orientation, so the JSON ``width``/``height``
    must be those of the upright image. The annotation file is checked on construction
    (:func:`load_coco_api`, segmentations too with ``return_masks``). ``.coco`` is the pycocotools ground
    truth (crowd boxes included) for evaluation.
    """

    def __init__(
        self,
        img_folder: str | Path,
        ann_file: str | Path,
        transforms: Transforms | None = None,
        return_masks: bool = False,
    ) -> None:
        # torchvision's __init__ would parse the file with pycocotools' bare asserts: parse it once here.
        VisionDataset.__init__(self, str(img_folder), transforms=transforms)
        self.img_folder = Path(img_folder)
        self.ann_file = Path(ann_file)
        if not self.img_folder.is_dir():
            raise MissingFileError(f"image folder not found: {self.img_folder}")
        self.coco = load_coco_api(self.ann_file, masks=return_masks)
        self.ids = sorted(self.coco.imgs)
        self.return_masks = return_masks

    def _load_image(self, id: int) -> PIL.Image.Image:
        info = self.coco.imgs[id]
        try:
            return load_rgb_image(self.img_folder / info["file_name"], _declared_size(info))
        except MissingFileError as err:
            raise MissingFileError(f"{err} (image id {id} of {self.ann_file})") from None
        except DataError as err:
            raise DataError(f"{err} (image id {id} of {self.ann_file})") from None

    def original_image(self, image_id: int) -> PIL.Image.Image:
        """The RGB image of ``image_id`` as stored (upright, untransformed), e.g. to draw on."""
        return self._load_image(int(image_id))

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image_id = self.ids[as_index(index)]
        image = self._load_image(image_id)
        target = coco_annotations_to_target(
            self.coco.imgToAnns[image_id], image_id, image.height, image.width, self.return_masks,
            source=str(self.ann_file),
        )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _declared_size(image: dict[str, Any]) -> tuple[float, float] | None:
    """``(width, height)`` of an image record when both are positive numbers (the validator reports the rest)."""
    size = (image.get("width"), image.get("height"))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf") for v in size):
        return size  # type: ignore[return-value]
    return None


# ----------------------------------------------------------------------------------------------
# Ground truth and categories of any dataset
# ----------------------------------------------------------------------------------------------
def get_coco_api(dataset: Dataset | COCO) -> COCO:
    """The pycocotools ground truth (``.coco``) of a dataset, looking through ``torch.utils.data.Subset``."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if isinstance(dataset, COCO):
        return dataset
    coco = getattr(dataset, "coco", None)
    if not isinstance(coco, COCO):
        raise TypeError(f"{type(dataset).__name__} has no COCO ground truth (.coco): cannot evaluate on it")
    return coco


def category_names(dataset: Dataset | COCO) -> dict[int, str]:
    """``{category id: name}`` of a dataset (or a ``COCO``), in the file's order."""
    return category_names_from_coco(get_coco_api(dataset).dataset.get("categories", []))


def category_ids(coco: COCO | Dataset) -> set[int]:
    """Every category id of the data: those its ``categories`` define and those its annotations use."""
    coco = get_coco_api(coco)
    ids = {int(c["id"]) for c in coco.dataset.get("categories", [])}
    return ids | {int(a["category_id"]) for a in coco.dataset.get("annotations", [])}


def implied_num_classes(coco: COCO | Dataset) -> int:
    """Class-head size K that covers the data's category ids (:func:`~torchdetr.categories.num_classes_for_category_ids`:
    the largest id + 1, the original's 250 for COCO panoptic's categories; ids are not remapped)."""
    num_classes = num_classes_for_category_ids(category_ids(coco))
    if num_classes is None:
        raise DataError("the annotations define no categories: cannot infer the number of classes")
    return num_classes
