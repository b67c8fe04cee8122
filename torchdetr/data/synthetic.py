"""A built-in synthetic detection dataset: flat-coloured shapes on a textured, cluttered background.

Each image (``image_size`` px square, 128 by default) holds 1–6 objects of five classes — circle,
square, triangle (pointing up, down, left or right), cross, ring — each with a random bright colour and
a size of 12–60 % of the image side. The background is a dim colour with a linear gradient, blocky
and fine noise, and thin dim lines and specks as clutter; objects are always brighter than it.

Objects are drawn in annotation order, later ones over earlier ones. A box is the full extent of the
drawn shape (also where a later object covers part of it), ``area`` is the number of its pixels still
visible, and ``segmentation`` is the RLE of those visible pixels. To keep every drawn object
recognisable, an object is placed only where it leaves every earlier object at least
``MIN_VISIBLE_FRACTION`` (30 %) visible; after ``PLACEMENT_TRIES`` failed positions it is left out
(so no unannotated shape fragments are ever drawn). Each annotation also records its ``color``.

Everything is a function of ``(seed, image index)`` only, through numpy's ``SeedSequence``: the same
seed gives byte-identical images and annotations in any order and in any DataLoader worker. The
layouts (and the pycocotools ground truth at ``.coco``) are computed when the dataset is built; pixels
are drawn on access.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from operator import index as as_index
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset

from ..atomic_write import write_atomic
from ..errors import ConfigError
from ..output_paths import make_output_folder, writing
from .coco import coco_annotations_to_target, coco_from_dict

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
CATEGORIES: dict[int, str] = {i + 1: name for i, name in enumerate(CLASS_NAMES)}  # ids start at 1
NATIVE_SIZE = 128
MIN_IMAGE_SIZE = 32
MIN_OBJECTS, MAX_OBJECTS = 1, 6
SIZE_RANGE = (0.12, 0.60)  # object side as a fraction of the image side
MIN_VISIBLE_FRACTION = 0.3
PLACEMENT_TRIES = 10
RING_INNER_RATIO = 0.55  # inner radius / outer radius
CROSS_ARM_RATIO = 0.34  # arm thickness / side
OBJECT_VALUE_RANGE = (0.75, 1.0)  # HSV value: objects are bright …
BACKGROUND_VALUE_RANGE = (0.12, 0.45)  # … and the background dim
FINE_NOISE = 5  # per-pixel uniform noise in [-5, 5] grey levels
CLUTTER_LINES = (2, 6)
CLUTTER_SPECKS = (3, 10)
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_LAYOUT_STREAM, _PAINT_STREAM = 0, 1


def split_seed(seed: int, image_set: str) -> int:
    """The dataset seed of one split, derived from a run seed so that train and val never coincide."""
    if image_set not in _SPLIT_CODES:
        raise ConfigError(f"unknown image set {image_set!r}: expected one of {', '.join(_SPLIT_CODES)}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    return int(np.random.SeedSequence([seed, _SPLIT_CODES[image_set]]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------
# Shapes: boolean masks on a side x side square, sampled at pixel centres
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def shape_mask(category_id: int, side: int, turn: int = 0) -> np.ndarray:
    """Read-only bool [side, side] mask of a class's shape, rotated by ``turn`` quarter turns.

    Every shape touches all four edges of its square, so its box is the square.
    """
    c = np.arange(side) + 0.5 - side / 2.0
    y, x = c[:, None], c[None, :]
    r = side / 2.0
    name = CLASS_NAMES[category_id - 1]
    if name == "circle":
        mask = x * x + y * y <= r * r
    elif name == "ring":
        d2 = x * x + y * y
        mask = (d2 <= r * r) & (d2 >= (RING_INNER_RATIO * r) ** 2)
    elif name == "square":
        mask = np.ones((side, side), dtype=bool)
    elif name == "triangle":  # apex at the top row, base on the bottom row
        row = np.arange(side)[:, None]
        mask = np.abs(x) <= (row + 1) / 2.0
    elif name == "cross":
        half = max(CROSS_ARM_RATIO * side / 2.0, 0.5)
        mask = (np.abs(x) <= half) | (np.abs(y) <= half)
        mask = np.broadcast_to(mask, (side, side))
    else:  # pragma: no cover - CLASS_NAMES and this function go together
        raise AssertionError(name)
    mask = np.ascontiguousarray(np.rot90(mask, turn))
    mask.setflags(write=False)
    return mask


@dataclass(frozen=True)
class PlacedShape:
    """One object of a layout: class, square of side ``side`` at (x0, y0), quarter turns and RGB colour."""

    category_id: int
    x0: int
    y0: int
    side: int
    turn: int
    color: tuple[int, int, int]

    @property
    def mask(self) -> np.ndarray:
        return shape_mask(self.category_id, self.side, self.turn)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) pixel-edge extent of the drawn shape."""
        return self.x0, self.y0, self.x0 + self.side, self.y0 + self.side


def random_color(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    """An RGB colour float [3] in 0..255 (rounded) of random hue, saturation and value in the given ranges."""
    h, s, v = rng.random(), rng.uniform(*saturation), rng.uniform(*value)
    return np.round(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255)


def sample_layout(rng: np.random.Generator, image_size: int) -> tuple[list[PlacedShape], np.ndarray]:
    """Place 1–6 shapes; return them (drawing order) and the owner map int16 [S, S] (-1 = background).

    A shape is placed only where every earlier shape keeps >= MIN_VISIBLE_FRACTION of its pixels.
    """
    owner = np.full((image_size, image_size), -1, dtype=np.int16)
    low = max(2, math.ceil(SIZE_RANGE[0] * image_size))
    high = max(low, math.floor(SIZE_RANGE[1] * image_size))
    placed: list[PlacedShape] = []
    visible: list[int] = []
    full: list[int] = []
    for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        category_id = int(rng.integers(1, len(CLASS_NAMES) + 1))
        turn = int(rng.integers(4))
        color = tuple(int(v) for v in random_color(rng, (0.5, 1.0), OBJECT_VALUE_RANGE))
        for _ in range(PLACEMENT_TRIES):
            side = int(rng.integers(low, high + 1))
            x0 = int(rng.integers(0, image_size - side + 1))
            y0 = int(rng.integers(0, image_size - side + 1))
            mask = shape_mask(category_id, side, turn)
            region = owner[y0 : y0 + side, x0 : x0 + side]
            covered = region[mask]
            lost = np.bincount(covered[covered >= 0], minlength=len(placed))
            if all(visible[k] - lost[k] >= MIN_VISIBLE_FRACTION * full[k] for k in range(len(placed))):
                break
        else:
            continue
        for k in range(len(placed)):
            visible[k] -= int(lost[k])
        region[mask] = len(placed)
        n_pixels = int(mask.sum())
        visible.append(n_pixels)
        full.append(n_pixels)
        placed.append(PlacedShape(category_id, x0, y0, side, turn, color))  # type: ignore[arg-type]
    return placed, owner


def paint_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """uint8 [S, S, 3]: dim colour + linear gradient + blocky and fine noise + thin lines and specks."""
    s = image_size
    base = random_color(rng, (0.0, 0.7), BACKGROUND_VALUE_RANGE)
    angle = rng.uniform(0, 2 * math.pi)
    axis = np.arange(s, dtype=np.float32) / s
    ramp = np.cos(angle) * axis[None, :] + np.sin(angle) * axis[:, None]  # in about [-1.4, 1.4]
    image = base.astype(np.float32)[None, None, :] + (np.float32(rng.uniform(8, 20)) * ramp)[:, :, None]
    block = max(2, s // 16)
    coarse = rng.normal(0.0, 6.0, size=(math.ceil(s / block), math.ceil(s / block), 3)).astype(np.float32)
    image += np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:s, :s]
    image += rng.integers(-FINE_NOISE, FINE_NOISE + 1, size=(s, s, 3), dtype=np.int16)
    for _ in range(int(rng.integers(CLUTTER_LINES[0], CLUTTER_LINES[1] + 1))):
        color = random_color(rng, (0.0, 1.0), BACKGROUND_VALUE_RANGE)
        (xa, ya), (xb, yb) = rng.uniform(0, s, size=(2, 2))
        n = int(max(abs(xb - xa), abs(yb - ya))) + 1
        cols = np.clip(np.round(np.linspace(xa, xb, n)).astype(int), 0, s - 1)
        rows = np.clip(np.round(np.linspace(ya, yb, n)).astype(int), 0, s - 1)
        image[rows, cols] = color
    n_specks = int(rng.integers(CLUTTER_SPECKS[0], CLUTTER_SPECKS[1] + 1))
    for x, y, r in zip(rng.integers(0, s, n_specks), rng.integers(0, s, n_specks), rng.integers(1, 3, n_specks)):
        image[max(0, y - r) : y + r, max(0, x - r) : x + r] = random_color(rng, (0.0, 1.0), BACKGROUND_VALUE_RANGE)
    return np.clip(image, 0, 255).astype(np.uint8)


def render(layout: list[PlacedShape], rng: np.random.Generator, image_size: int) -> np.ndarray:
    """uint8 [S, S, 3] image of a layout: the background, then each shape in order, flat-coloured."""
    image = paint_background(rng, image_size)
    for shape in layout:
        region = image[shape.y0 : shape.y0 + shape.side, shape.x0 : shape.x0 + shape.side]
        region[shape.mask] = shape.color
    return image


def _layout_annotations(layout: list[PlacedShape], owner: np.ndarray, image_id: int, first_id: int) -> list[dict]:
    if not layout:
        return []
    visible = owner[:, :, None] == np.arange(len(layout), dtype=owner.dtype)[None, None, :]
    rles = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    annotations = []
    for k, (shape, rle) in enumerate(zip(layout, rles)):
        x1, y1, x2, y2 = shape.box
        annotations.append({
            "id": first_id + k,
            "image_id": image_id,
            "category_id": shape.category_id,
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "area": float(mask_utils.area(rle)),
            "iscrowd": 0,
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "color": list(shape.color),
        })
    return annotations


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------
class SyntheticShapes(Dataset):
    """``num_images`` synthetic images: ``dataset[i]`` → ``(image, target)`` exactly like ``CocoDetection``.

    Image ids are 1..num_images (``dataset[i]`` has id ``i + 1``); category ids 1..5 (``CATEGORIES``).
    ``.coco`` is the pycocotools ground truth built in memory, so COCO evaluation works as for a folder.
    ``return_masks`` adds the visible-pixel masks [N, H, W].
    """

    def __init__(
        self,
        num_images: int,
        seed: int = 0,
        image_size: int = NATIVE_SIZE,
        transforms: Callable[[PIL.Image.Image, dict[str, Tensor]], tuple[Any, Any]] | None = None,
        return_masks: bool = False,
    ) -> None:
        if num_images < 0:
            raise ConfigError(f"num_images must be >= 0, got {num_images}")
        if image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"synthetic image_size must be >= {MIN_IMAGE_SIZE} px, got {image_size}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.num_images = num_images
        self.seed = seed
        self.image_size = image_size
        self.transforms = transforms
        self.return_masks = return_masks
        self.layouts: list[list[PlacedShape]] = []
        images, annotations = [], []
        for i in range(num_images):
            layout, owner = sample_layout(self._rng(i, _LAYOUT_STREAM), image_size)
            self.layouts.append(layout)
            images.append({"id": i + 1, "file_name": f"{i:06d}.png", "width": image_size, "height": image_size})
            annotations += _layout_annotations(layout, owner, i + 1, len(annotations) + 1)
        categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in CATEGORIES.items()]
        self.coco = coco_from_dict({
            "info": {"description": f"torchdetr synthetic shapes (seed {seed}, {image_size} px)"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        })
        self.ids = [image["id"] for image in images]

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index, stream])

    def __len__(self) -> int:
        return self.num_images

    def render(self, index: int) -> np.ndarray:
        """The uint8 [S, S, 3] RGB pixels of image ``index``."""
        return render(self.layouts[index], self._rng(index, _PAINT_STREAM), self.image_size)

    def original_image(self, image_id: int) -> PIL.Image.Image:
        """The RGB image of ``image_id`` (untransformed), e.g. to draw on."""
        return PIL.Image.fromarray(self.render(self.ids.index(int(image_id))))

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        index = as_index(index)
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} synthetic images")
        index %= self.num_images
        image = PIL.Image.fromarray(self.render(index))
        image_id = self.ids[index]
        target = coco_annotations_to_target(
            self.coco.imgToAnns[image_id], image_id, self.image_size, self.image_size, self.return_masks,
            source="synthetic shapes",
        )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def write_coco_folder(
    out_dir: str | Path, num_train: int = 2000, num_val: int = 200, seed: int = 0, image_size: int = NATIVE_SIZE
) -> Path:
    """Write a synthetic dataset in the generic COCO layout and return ``out_dir``.

    Creates ``images/{train,val}_NNNNNN.png`` and ``annotations/instances_{train,val}.json``. The splits
    use ``split_seed(seed, "train")`` and ``split_seed(seed, "val")``, the seeds ``build_dataset`` uses
    for ``--dataset_file synthetic --seed SEED``, so the folder holds the same images as that run.
    Files of the same names are replaced (``detr data synth`` refuses a non-empty folder without
    ``--overwrite``); annotation files atomically. A failed write is an ``OutputError`` naming the file.
    """
    out = Path(out_dir)
    make_output_folder(out / "images", what=str(out))
    make_output_folder(out / "annotations", what=str(out))
    for image_set, count in (("train", num_train), ("val", num_val)):
        dataset = SyntheticShapes(count, seed=split_seed(seed, image_set), image_size=image_size)
        data = dict(dataset.coco.dataset)
        data["images"] = [dict(info, file_name=f"{image_set}_{info['file_name']}") for info in data["images"]]
        for i, info in enumerate(data["images"]):
            with writing(out / "images" / info["file_name"], what="image") as path:
                PIL.Image.fromarray(dataset.render(i)).save(path, compress_level=1)
        write_atomic(out / "annotations" / f"instances_{image_set}.json", lambda f, data=data: f.write(json.dumps(data).encode()),
                     what="annotation file")
    return out
