"""Synthetic clips and large images made of the synthetic dataset's shapes, with exact ground truth.

``SyntheticVideo``: shapes (``data.synthetic``'s circles, squares, triangles, crosses and rings)
moving on straight lines at constant speed over a fixed textured background. Each shape has its
own horizontal lane, so shapes never overlap and every identity is unambiguous; ``ground_truth(k)``
gives each shape's identity, class and box in frame ``k`` (positions rounded to whole pixels).

``SyntheticLargeImages``: large images (2048 px by default) with dozens of small shapes (12–24 px),
never overlapping, with a pycocotools ground truth at ``.coco`` (as ``SyntheticShapes``), for
tiled inference.

Both are functions of their seed only (numpy ``SeedSequence``), like ``SyntheticShapes``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from ..errors import ConfigError
from .coco import coco_from_dict
from .synthetic import CATEGORIES, CLASS_NAMES, OBJECT_VALUE_RANGE, paint_background, random_color, shape_mask

DEFAULT_VIDEO_SIZE = (320, 240)  # (W, H)
DEFAULT_VIDEO_OBJECTS = 3
VIDEO_SIDE_RANGE = (0.45, 0.8)  # shape side as a fraction of its lane's height
LARGE_IMAGE_SIZE = 2048
LARGE_OBJECT_SIDES = (12, 24)  # px
LARGE_OBJECT_COUNT = (30, 60)
LARGE_OBJECT_GAP = 4  # px of background kept between any two shapes
LARGE_PLACEMENT_TRIES = 50


@dataclass(frozen=True)
class MovingShape:
    """One moving object: identity ``track_id``, class, square side, quarter turns, colour, and its
    top-left corner at the first frame (``start``) and at the last (``end``), in pixels."""

    track_id: int
    category_id: int
    side: int
    turn: int
    color: tuple[int, int, int]
    start: tuple[float, float]
    end: tuple[float, float]

    def corner(self, frame: int, num_frames: int) -> tuple[int, int]:
        """Top-left corner (x, y) in frame ``frame``: on the straight line from ``start`` to ``end``, rounded."""
        fraction = frame / max(num_frames - 1, 1)
        return (round(self.start[0] + fraction * (self.end[0] - self.start[0])),
                round(self.start[1] + fraction * (self.end[1] - self.start[1])))


@dataclass(frozen=True)
class TrackedBox:
    """Ground truth of one object in one frame: identity, class id and box (x1, y1, x2, y2) pixel edges."""

    track_id: int
    category_id: int
    box: tuple[int, int, int, int]


class SyntheticVideo:
    """``num_frames`` frames (``size`` = (W, H)) of ``num_objects`` shapes moving on straight lines.

    Frames are drawn on access (``frame(k)``, or ``frames()`` one by one), so a long clip costs no
    memory. ``rate`` is the intended frame rate (frames/s) for writing it as a video.
    """

    def __init__(self, num_frames: int, seed: int = 0, size: tuple[int, int] = DEFAULT_VIDEO_SIZE,
                 num_objects: int = DEFAULT_VIDEO_OBJECTS, rate: int = 25) -> None:
        width, height = size
        if num_frames < 1:
            raise ConfigError(f"num_frames must be positive, got {num_frames}")
        if num_objects < 1 or height // num_objects < 8:
            raise ConfigError(f"num_objects must be 1..{height // 8} for a frame {height} px high, got {num_objects}")
        if rate <= 0:
            raise ConfigError(f"rate must be positive, got {rate}")
        self.num_frames, self.size, self.rate, self.seed = num_frames, (width, height), rate, seed
        rng = np.random.default_rng([seed, 0])
        self.background = paint_background(np.random.default_rng([seed, 1]), max(width, height))[:height, :width]
        lane = height // num_objects
        self.shapes: list[MovingShape] = []
        for k in range(num_objects):
            side = int(rng.integers(round(VIDEO_SIDE_RANGE[0] * lane), round(VIDEO_SIDE_RANGE[1] * lane) + 1))
            top, bottom = k * lane, (k + 1) * lane - side
            xs = rng.uniform(0, width - side, size=2)
            ys = rng.uniform(top, bottom, size=2)
            color = tuple(int(v) for v in random_color(rng, (0.5, 1.0), OBJECT_VALUE_RANGE))
            self.shapes.append(MovingShape(
                track_id=k + 1, category_id=int(rng.integers(1, len(CLASS_NAMES) + 1)), side=side,
                turn=int(rng.integers(4)), color=color, start=(float(xs[0]), float(ys[0])), end=(float(xs[1]), float(ys[1])),
            ))

    def __len__(self) -> int:
        return self.num_frames

    def ground_truth(self, frame: int) -> list[TrackedBox]:
        """Every object's identity, class and box in frame ``frame``."""
        boxes = []
        for shape in self.shapes:
            x, y = shape.corner(frame, self.num_frames)
            boxes.append(TrackedBox(shape.track_id, shape.category_id, (x, y, x + shape.side, y + shape.side)))
        return boxes

    def frame(self, index: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB pixels of frame ``index``."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range for {self.num_frames} frames")
        image = self.background.copy()
        for shape, truth in zip(self.shapes, self.ground_truth(index)):
            x1, y1, x2, y2 = truth.box
            image[y1:y2, x1:x2][shape_mask(shape.category_id, shape.side, shape.turn)] = shape.color
        return image

    def frames(self) -> Iterator[np.ndarray]:
        """All frames, one at a time."""
        for index in range(self.num_frames):
            yield self.frame(index)


# ----------------------------------------------------------------------------------------------
# Large images with small objects
# ----------------------------------------------------------------------------------------------
def _place_small_shapes(rng: np.random.Generator, image_size: int) -> list[tuple[int, int, int, int, int]]:
    """Non-overlapping (category, x0, y0, side, turn) squares, ``LARGE_OBJECT_GAP`` px apart."""
    placed: list[tuple[int, int, int, int, int]] = []
    occupied = np.zeros((image_size, image_size), dtype=bool)
    for _ in range(int(rng.integers(LARGE_OBJECT_COUNT[0], LARGE_OBJECT_COUNT[1] + 1))):
        category_id, turn = int(rng.integers(1, len(CLASS_NAMES) + 1)), int(rng.integers(4))
        for _ in range(LARGE_PLACEMENT_TRIES):
            side = int(rng.integers(LARGE_OBJECT_SIDES[0], LARGE_OBJECT_SIDES[1] + 1))
            x0, y0 = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
            g = LARGE_OBJECT_GAP
            if not occupied[max(0, y0 - g):y0 + side + g, max(0, x0 - g):x0 + side + g].any():
                occupied[y0:y0 + side, x0:x0 + side] = True
                placed.append((category_id, x0, y0, side, turn))
                break
    return placed


class SyntheticLargeImages:
    """``num_images`` square images of ``image_size`` px with 30–60 shapes of 12–24 px each.

    ``.coco`` is the pycocotools ground truth (image ids 1..N, categories as ``SyntheticShapes``);
    ``render(i)`` draws image ``i`` (uint8 [S, S, 3]).
    """

    def __init__(self, num_images: int, seed: int = 0, image_size: int = LARGE_IMAGE_SIZE) -> None:
        if num_images < 0:
            raise ConfigError(f"num_images must be >= 0, got {num_images}")
        if image_size < 4 * LARGE_OBJECT_SIDES[1]:
            raise ConfigError(f"image_size must be at least {4 * LARGE_OBJECT_SIDES[1]} px, got {image_size}")
        self.num_images, self.seed, self.image_size = num_images, seed, image_size
        self.layouts = [_place_small_shapes(np.random.default_rng([seed, i, 0]), image_size) for i in range(num_images)]
        images, annotations = [], []
        for i, layout in enumerate(self.layouts):
            images.append({"id": i + 1, "file_name": f"large_{i:04d}.png", "width": image_size, "height": image_size})
            for category_id, x0, y0, side, turn in layout:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": category_id,
                    "bbox": [float(x0), float(y0), float(side), float(side)],
                    "area": float(shape_mask(category_id, side, turn).sum()), "iscrowd": 0,
                })
        categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in CATEGORIES.items()]
        self.coco = coco_from_dict({
            "info": {"description": f"torchdetr synthetic large images (seed {seed}, {image_size} px)"},
            "images": images, "annotations": annotations, "categories": categories,
        })

    def __len__(self) -> int:
        return self.num_images

    def render(self, index: int) -> np.ndarray:
        """uint8 [S, S, 3] RGB pixels of image ``index``."""
        rng = np.random.default_rng([self.seed, index, 1])
        image = paint_background(rng, self.image_size)
        for category_id, x0, y0, side, turn in self.layouts[index]:
            color = tuple(int(v) for v in random_color(rng, (0.5, 1.0), OBJECT_VALUE_RANGE))
            image[y0:y0 + side, x0:x0 + side][shape_mask(category_id, side, turn)] = color
        return image

    def write(self, out_dir: str | Path) -> Path:
        """Write ``images/large_NNNN.png`` and ``annotations/instances_large.json`` under ``out_dir``; return it."""
        out = Path(out_dir)
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        for i, info in enumerate(self.coco.dataset["images"]):
            PIL.Image.fromarray(self.render(i)).save(out / "images" / info["file_name"], compress_level=1)
        (out / "annotations" / "instances_large.json").write_text(json.dumps(self.coco.dataset))
        return out
