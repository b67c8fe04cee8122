"""The images of a dataset split, for a command that runs a model over them (INT8 calibration, benchmark AP).

A dataset folder in either layout ``data.layout`` knows (generic or COCO 2017); its ``val`` split
by default. Images are the annotation file's, in its order, loaded with the data layer's one loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..data.io import load_rgb_image
from ..data.layout import resolve_split
from ..data.transforms import make_transforms
from ..errors import DataError
from ..structures import NestedTensor, nested_tensor_from_tensor_list

DEFAULT_SPLIT = "val"


@dataclass(frozen=True)
class DatasetImage:
    """One image of a split: its COCO ``image_id`` and file."""

    image_id: int
    path: Path


def dataset_images(data_dir: str | Path, split: str = DEFAULT_SPLIT, limit: int | None = None) -> tuple[Path, list[DatasetImage]]:
    """``(annotation file, images)`` of ``split`` in ``data_dir``: the first ``limit`` images of the annotation file."""
    files = resolve_split(data_dir, split)
    try:
        entries = json.loads(files.ann_file.read_text())["images"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{files.ann_file}: not a COCO annotation file (no 'images' list)") from None
    try:
        images = [DatasetImage(int(e["id"]), files.images_dir / e["file_name"]) for e in entries[:limit]]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{files.ann_file}: an 'images' entry without an integer 'id' and a 'file_name' "
                        f"(run `detr data check {data_dir}`)") from None
    if not images:
        raise DataError(f"{files.ann_file}: no images")
    return files.ann_file, images


def load_images(images: list[DatasetImage]) -> list[Image.Image]:
    """The images as upright RGB PIL images."""
    return [load_rgb_image(image.path) for image in images]


def preprocessed_batches(pictures: list[Image.Image], image_size: int, max_size: int | None) -> list[NestedTensor]:
    """One padded batch per image, resized and normalised as for validation (``[1, 3, H, W]`` + mask)."""
    transform = make_transforms("val", image_size, max_size)
    return [nested_tensor_from_tensor_list([transform(picture, None)[0]]) for picture in pictures]
