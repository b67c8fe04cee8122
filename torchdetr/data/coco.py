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
import json
import math
import warnings
from collections.abc import Callable, Sequence
from operator import index as as_index
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision.datasets import CocoDetection as _TorchvisionCocoDetection
from torchvision.datasets import VisionDataset

from ..categories import category_names_from_coco

EXIF_ORIENTATION_TAG = 0x0112  # 1 = upright; 2..8 = flipped and/or rotated


# ----------------------------------------------------------------------------------------------
# Annotation files
# ----------------------------------------------------------------------------------------------
def load_coco_api(ann_file: str | Path) -> COCO:
    """Read and check a COCO instances JSON file; return an indexed pycocotools ``COCO``.

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` naming the file and the
    entry when it is not valid JSON or not COCO detection annotations (see ``validate_coco_dict``).
    """
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid JSON file ({err})") from None
    validate_coco_dict(data, source=str(path))
    return coco_from_dict(data)


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """An indexed pycocotools ``COCO`` over an in-memory annotation dict (no printing)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def validate_coco_dict(data: Any, source: str = "annotations") -> None:
    """Check the structure of COCO detection annotations; raise ``ValueError`` naming ``source`` and the entry.

    Needs ``images`` (unique integer ``id``, ``file_name``), ``categories`` (unique integer ``id``) and
    ``annotations`` (unique ``id``, an existing ``image_id`` and ``category_id``, ``bbox`` of four finite
    numbers [x, y, w, h]). An annotation without ``area`` gets its box area (COCO evaluation needs one).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise ValueError(f"{source}: '{key}' must be a list ({found}); is this a COCO instances file?")

    image_ids = _unique_int_ids(data["images"], "images", source)
    for i, image in enumerate(data["images"]):
        if not isinstance(image.get("file_name"), str):
            raise ValueError(f"{source}: images[{i}] (id {image['id']}) has no 'file_name'")
    category_ids = _unique_int_ids(data["categories"], "categories", source)
    _unique_int_ids(data["annotations"], "annotations", source)
    for i, ann in enumerate(data["annotations"]):
        where = f"{source}: annotations[{i}] (id {ann['id']})"
        if ann.get("image_id") not in image_ids:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in category_ids:
            raise ValueError(
                f"{where}: category_id {ann.get('category_id')!r} is not in 'categories' (ids {sorted(category_ids)})"
            )
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
        ):
            raise ValueError(f"{where}: 'bbox' must be four finite numbers [x, y, width, height], got {bbox!r}")
        if "area" not in ann:
            ann["area"] = float(max(bbox[2], 0) * max(bbox[3], 0))


def _unique_int_ids(entries: list[Any], key: str, source: str) -> set[int]:
    ids: set[int] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: {key}[{i}] must be an object, got {type(entry).__name__}")
        entry_id = entry.get("id")
        if not isinstance(entry_id, int) or isinstance(entry_id, bool):
            raise ValueError(f"{source}: {key}[{i}] needs an integer 'id', got {entry_id!r}")
        if entry_id in ids:
            raise ValueError(f"{source}: {key}[{i}]: id {entry_id} is used twice")
        ids.add(entry_id)
    return ids


# ----------------------------------------------------------------------------------------------
# Folder layouts
# ----------------------------------------------------------------------------------------------
def resolve_coco_layout(root: str | Path, image_set: str) -> tuple[Path, Path]:
    """``(image folder, annotation file)`` of ``image_set`` ("train", "val", …) in a dataset folder.

    Two layouts are recognised, in this order:

    - COCO 2017: ``{image_set}2017/`` and ``annotations/instances_{image_set}2017.json``;
    - generic: ``annotations/instances_{image_set}.json`` with the images in ``images/{image_set}/``
      when that folder exists, else in ``images/`` (``file_name`` is relative to that folder).

    Raises ``FileNotFoundError`` listing what was looked for when neither is complete.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    annotations = root / "annotations"
    coco2017 = (root / f"{image_set}2017", annotations / f"instances_{image_set}2017.json")
    generic_ann = annotations / f"instances_{image_set}.json"
    generic_images = root / "images" / image_set
    if not generic_images.is_dir():
        generic_images = root / "images"
    for images, ann_file in (coco2017, (generic_images, generic_ann)):
        if images.is_dir() and ann_file.is_file():
            return images, ann_file
    looked_for = [
        f"COCO 2017 layout: {coco2017[0].name}/ and annotations/{coco2017[1].name}",
        f"generic layout: images/ (or images/{image_set}/) and annotations/{generic_ann.name}",
    ]
    present = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:20]
    raise FileNotFoundError(
        f"no '{image_set}' split found in {root}; looked for the " + "; the ".join(looked_for)
        + f". The folder holds: {', '.join(present) or 'nothing'}"
    )


# ----------------------------------------------------------------------------------------------
# Images and targets
# ----------------------------------------------------------------------------------------------
def load_rgb_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> PIL.Image.Image:
    """Open an image file as RGB, upright according to its EXIF orientation.

    ``expected_size`` = (width, height) from the annotation file. Annotations must describe the
    *upright* (EXIF-transposed) image, so the JSON width/height must match it; a file whose stored
    (un-transposed) pixels match instead is returned as stored, since its annotations were then made on
    those pixels. Raises ``FileNotFoundError``/``ValueError`` naming the file when it is missing,
    unreadable, or matches the expected size in neither orientation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        stored = PIL.Image.open(path)
        stored.load()  # reads the pixels and closes the file
        orientation = stored.getexif().get(EXIF_ORIENTATION_TAG, 1)
        upright = PIL.ImageOps.exif_transpose(stored) if orientation != 1 else stored
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: cannot read the image ({err})") from None
    if expected_size is None or upright.size == expected_size:
        return _as_rgb(upright)
    if stored.size == expected_size:
        return _as_rgb(stored)
    raise ValueError(
        f"{path}: the image is {upright.width}x{upright.height} (width x height) but the annotation file says "
        f"{expected_size[0]}x{expected_size[1]}"
    )


def _as_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


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
            raise ValueError(f"RLE segmentation of size {segmentation['size']} on an image of size {[height, width]}")
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
    else:
        raise ValueError(f"unknown segmentation format: {type(segmentation).__name__}")
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
    boxes = torch.tensor([a["bbox"] for a in objects], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2].clamp_(min=0, max=width)
    boxes[:, 1::2].clamp_(min=0, max=height)
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
                raise ValueError(
                    f"{source}: annotation {ann.get('id')} has no 'segmentation'; masks need polygons or RLE"
                )
            try:
                masks[i] = segmentation_to_mask(ann["segmentation"], height, width)
            except ValueError as err:
                raise ValueError(f"{source}: annotation {ann.get('id')}: {err}") from None
        target["masks"] = torch.from_numpy(masks)
    return target


Transforms = Callable[[PIL.Image.Image, dict[str, Tensor]], tuple[Any, Any]]


class CocoDetection(_TorchvisionCocoDetection):
    """A COCO-format detection dataset: ``dataset[i]`` → ``(image, target)``.

    ``img_folder`` holds the images (``file_name`` is relative to it), ``ann_file`` the COCO instances
    JSON. Without ``transforms`` the image is an RGB PIL image and the target is in pixels (see
    ``coco_annotations_to_target``); ``transforms`` is called as ``transforms(image, target)``.

    Images are converted to RGB (grayscale, palette, RGBA…) and turned upright according to their EXIF
    orientation, so the JSON ``width``/``height`` must be those of the upright image (see
    ``load_rgb_image``). ``.coco`` is the pycocotools ground truth (crowd boxes included) for evaluation.
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
            raise FileNotFoundError(f"image folder not found: {self.img_folder}")
        self.coco = load_coco_api(self.ann_file)
        self.ids = sorted(self.coco.imgs)
        self.return_masks = return_masks

    def _load_image(self, id: int) -> PIL.Image.Image:
        info = self.coco.imgs[id]
        expected = (info["width"], info["height"]) if "width" in info and "height" in info else None
        try:
            return load_rgb_image(self.img_folder / info["file_name"], expected)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (image id {id} of {self.ann_file})") from None
        except ValueError as err:
            raise ValueError(f"{err} (image id {id} of {self.ann_file})") from None

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


def implied_num_classes(coco: COCO | Dataset) -> int:
    """Class-head size K that covers the data: the largest category id + 1 (ids are not remapped)."""
    coco = get_coco_api(coco)
    ids = [int(c["id"]) for c in coco.dataset.get("categories", [])]
    ids += [int(a["category_id"]) for a in coco.dataset.get("annotations", [])]
    if not ids:
        raise ValueError("the annotations define no categories: cannot infer the number of classes")
    return max(ids) + 1
