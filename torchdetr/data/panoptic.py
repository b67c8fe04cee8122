"""COCO panoptic data: annotation files, segment PNGs, and the (image, target) pairs the mask head trains on.

A COCO panoptic split is an annotation file (``images``; ``categories`` with ``isthing``; one ``annotations``
entry per image with ``file_name`` — its PNG — and ``segments_info``), a folder of PNGs whose pixel colours
are segment ids (id = R + 256·G + 256²·B, 0 = void) and the image folder (:mod:`.layout` finds them).

``CocoPanoptic`` is the original DETR's ``CocoPanoptic``: ``dataset[i]`` → ``(image, target)`` with one
object per segment of ``segments_info`` — ``masks`` [N, H, W] uint8 (with ``return_masks``), ``labels`` [N]
(category ids, not remapped), ``boxes`` [N, 4] (x1, y1, x2, y2 from the mask: torchvision's
``masks_to_boxes``, whose x2, y2 are the last pixel's coordinates, as the original's), ``iscrowd`` [N] and
``area`` [N] (the file's, else the pixel count), ``image_id``, ``orig_size``, ``size``. As in the original,
crowd segments stay in the target. Segments without a pixel in the PNG are left out (``detr data check``
reports them). The transforms move the masks with the image, as for detection.

For evaluation it also offers the ground truth of an image as an id map (:meth:`CocoPanoptic.ground_truth`,
what PQ is computed against) and, at ``.coco``, the same segments as COCO detection annotations (boxes, and
RLE masks with ``return_masks``: what segm AP is computed against; built when first used, since reading every
PNG takes time).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from torchvision.ops import masks_to_boxes

from ..errors import DataError, MissingFileError
from .coco import coco_from_dict
from .io import load_rgb_image, load_segment_ids
from .validate import VOID_SEGMENT_ID, PanopticValidation, load_coco_json, validate_coco_panoptic

__all__ = [
    "VOID_SEGMENT_ID", "CocoPanoptic", "PanopticCategory", "PanopticImage", "get_panoptic_dataset",
    "load_panoptic_json", "panoptic_categories", "panoptic_to_detection", "segment_bbox", "segment_masks",
]

Transforms = Callable[[PIL.Image.Image, dict[str, Tensor]], tuple[Any, Any]]


@dataclass(frozen=True)
class PanopticCategory:
    """A panoptic category: things are countable objects (one segment each), stuff amorphous regions."""

    id: int
    name: str
    isthing: bool


@dataclass(frozen=True)
class PanopticImage:
    """The panoptic segmentation of one image: ``id_map`` int64 [H, W] (0 = void) and its ``segments``
    (``segments_info`` dicts: ``id``, ``category_id``, ``iscrowd``, ...)."""

    id_map: np.ndarray
    segments: Sequence[Mapping[str, Any]]


def panoptic_categories(categories: Sequence[Mapping[str, Any]]) -> dict[int, PanopticCategory]:
    """``{id: PanopticCategory}`` from the ``categories`` list of a (validated) COCO panoptic file."""
    return {int(c["id"]): PanopticCategory(int(c["id"]), str(c.get("name", c["id"])), bool(c["isthing"]))
            for c in categories}


def load_panoptic_json(path: str | Path) -> tuple[dict[str, Any], PanopticValidation]:
    """Read and check a COCO panoptic annotation file: ``(content, validation)``.

    Raises:
        MissingFileError: the file does not exist.
        DataError: not JSON, or the first fatal problem of the file (:func:`.validate.validate_coco_panoptic`),
            naming the file, the entry and the value.
    """
    content = load_coco_json(path, "panoptic annotation file")
    validation = validate_coco_panoptic(content, str(path))
    validation.raise_first()
    return content, validation


def segment_masks(id_map: np.ndarray, segments: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[int]]:
    """Binary masks bool [N, H, W] of the segments that have pixels in ``id_map``, and their indices in ``segments``."""
    ids = np.array([int(s["id"]) for s in segments], dtype=np.int64)
    masks = id_map[None, :, :] == ids[:, None, None]
    present = np.flatnonzero(masks.reshape(len(ids), -1).any(1)).tolist()
    return masks[present], present


class CocoPanoptic(Dataset):
    """A COCO panoptic split: ``dataset[i]`` → ``(image, target)`` (see the module docstring).

    ``img_folder`` holds the images (``images[].file_name``), ``png_folder`` the segment PNGs
    (``annotations[].file_name``), ``ann_file`` is the panoptic JSON, checked on construction. Images are
    read by the one loader (:func:`.io.load_rgb_image`); each PNG must have its image's size. ``ids``: the
    sorted ids of the images that have an annotation.
    """

    def __init__(
        self,
        img_folder: str | Path,
        png_folder: str | Path,
        ann_file: str | Path,
        transforms: Transforms | None = None,
        return_masks: bool = True,
    ) -> None:
        self.img_folder, self.png_folder, self.ann_file = Path(img_folder), Path(png_folder), Path(ann_file)
        for what, folder in (("image", self.img_folder), ("segment PNG", self.png_folder)):
            if not folder.is_dir():
                raise MissingFileError(f"{what} folder not found: {folder}")
        content, validation = load_panoptic_json(self.ann_file)
        self.images: dict[int, dict[str, Any]] = validation.images
        self.annotations: dict[int, dict[str, Any]] = validation.annotations
        self.categories: dict[int, PanopticCategory] = panoptic_categories(
            [c for c in content["categories"] if c.get("id") in validation.isthing])
        self.info = content.get("info", {})
        self.ids = sorted(self.annotations)
        self.transforms = transforms
        self.return_masks = return_masks
        self._coco: COCO | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def thing_ids(self) -> set[int]:
        """Ids of the categories that are things."""
        return {cid for cid, cat in self.categories.items() if cat.isthing}

    def ground_truth(self, image_id: int) -> PanopticImage:
        """The id map (from the PNG) and ``segments_info`` of image ``image_id``."""
        info, ann = self.images[image_id], self.annotations[image_id]
        id_map = load_segment_ids(self.png_folder / ann["file_name"], (info["width"], info["height"]))
        return PanopticImage(id_map, ann["segments_info"])

    def _load_image(self, image_id: int) -> PIL.Image.Image:
        info = self.images[image_id]
        try:
            return load_rgb_image(self.img_folder / info["file_name"], (info["width"], info["height"]))
        except (MissingFileError, DataError) as err:
            raise type(err)(f"{err} (image id {image_id} of {self.ann_file})") from None

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image_id = self.ids[as_index(index)]
        image = self._load_image(image_id)
        ground_truth = self.ground_truth(image_id)
        masks, present = segment_masks(ground_truth.id_map, ground_truth.segments)
        segments = [ground_truth.segments[i] for i in present]
        mask_tensor = torch.from_numpy(masks.astype(np.uint8))
        areas = [float(s["area"]) if "area" in s else float(m.sum()) for s, m in zip(segments, masks)]
        target: dict[str, Tensor] = {
            "boxes": masks_to_boxes(mask_tensor).reshape(-1, 4),
            "labels": torch.tensor([int(s["category_id"]) for s in segments], dtype=torch.int64),
            "image_id": torch.tensor([image_id], dtype=torch.int64),
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.tensor([int(s["iscrowd"]) for s in segments], dtype=torch.int64),
            "orig_size": torch.tensor([image.height, image.width], dtype=torch.int64),
            "size": torch.tensor([image.height, image.width], dtype=torch.int64),
        }
        if self.return_masks:
            target["masks"] = mask_tensor
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    @property
    def coco(self) -> COCO:
        """The segments as a pycocotools COCO detection ground truth (built on first use; see the module docstring)."""
        if self._coco is None:
            content = {"info": self.info, "images": [self.images[i] for i in sorted(self.images)],
                       "categories": [{"id": c.id, "name": c.name, "isthing": int(c.isthing)}
                                      for c in self.categories.values()]}
            content["annotations"] = panoptic_to_detection(self, with_masks=self.return_masks)
            self._coco = coco_from_dict(content)
        return self._coco


def panoptic_to_detection(dataset: CocoPanoptic, with_masks: bool = True) -> list[dict[str, Any]]:
    """Every segment of a panoptic dataset as a COCO detection annotation (ids 1, 2, …; crowd kept as crowd).

    ``bbox`` and ``area`` are the file's when given, else measured on the PNG; with ``with_masks`` the
    ``segmentation`` is the segment's RLE (PNGs are read then). Segments without pixels are left out.
    """
    annotations: list[dict[str, Any]] = []
    for image_id in dataset.ids:
        segments = dataset.annotations[image_id]["segments_info"]
        needs_png = with_masks or any("bbox" not in s or "area" not in s for s in segments)
        if needs_png:
            masks, present = segment_masks(dataset.ground_truth(image_id).id_map, segments)
            rles = _encode(masks) if with_masks else [None] * len(present)
        else:
            present, masks, rles = list(range(len(segments))), None, [None] * len(segments)
        for k, (i, rle) in enumerate(zip(present, rles)):
            seg = segments[i]
            bbox = seg.get("bbox") or segment_bbox(masks[k])
            area = seg["area"] if "area" in seg else int(masks[k].sum())
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(seg["category_id"]),
                   "bbox": [float(v) for v in bbox], "area": float(area), "iscrowd": int(seg["iscrowd"])}
            if rle is not None:
                ann["segmentation"] = rle
            annotations.append(ann)
    return annotations


def _encode(masks: np.ndarray) -> list[dict[str, Any]]:
    """Bool [N, H, W] → N COCO RLEs with string ``counts``."""
    if len(masks) == 0:
        return []
    with warnings.catch_warnings():  # pycocotools trips a numpy 2 DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def segment_bbox(mask: np.ndarray) -> list[int]:
    """The COCO panoptic ``bbox`` of a segment: [x, y, width, height] in pixels, the extent of a non-empty bool
    [H, W] mask with its last row and column included (``masks_to_boxes`` gives x2, y2 = the last pixel's
    coordinates, hence + 1: a one-pixel segment is 1 x 1)."""
    x1, y1, x2, y2 = (int(v) for v in masks_to_boxes(torch.from_numpy(np.asarray(mask, dtype=bool))[None])[0])
    return [x1, y1, x2 - x1 + 1, y2 - y1 + 1]


def get_panoptic_dataset(dataset: Dataset) -> CocoPanoptic | None:
    """The ``CocoPanoptic`` under a dataset (looking through ``Subset``), or None for other datasets."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, CocoPanoptic) else None
