"""A built-in synthetic panoptic dataset: the shapes of :mod:`.synthetic` (things) on background regions (stuff).

Each image (``image_size`` px square, 128 by default) is split into 1–3 horizontal bands by wavy boundaries;
each band is one **stuff** segment of a distinct class, recognisable by its colour family and texture:

=====  ==========  =======================================  =============================
id     name        colour (dim: objects stay brighter)      texture
=====  ==========  =======================================  =============================
6      ``sky``     blue                                     smooth vertical gradient
7      ``grass``   green                                    fine per-pixel noise
8      ``sand``    orange-brown                             horizontal stripes
=====  ==========  =======================================  =============================

Thin dim lines cross the background as clutter; their pixels are **void** (id 0: unlabelled), as COCO leaves
ambiguous pixels unlabelled. The **things** are the detection set's shapes (ids 1–5: circle, square,
triangle, cross, ring), placed and drawn by the same rules (:func:`.synthetic.sample_layout`), over everything
else; each visible shape is one segment.

Segment ids: ``category_id * 1000`` for stuff, ``category_id * 1000 + k + 1`` for the k-th shape (unique per
image, and above 255 so that the PNG's green channel is used too). ``segments_info`` carries ``area`` (pixel
count) and ``bbox`` (the visible pixels' extent); segments hidden entirely are left out.

:func:`write_panoptic_folder` writes the generic panoptic layout (``detr data synth --panoptic``); every image
is a function of ``(seed, split, index)`` only.
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..atomic_write import write_atomic
from ..errors import ConfigError
from ..output_paths import make_output_folder, writing
from ..structures import id2rgb
from .layout import generic_panoptic_split_files
from .panoptic import segment_bbox
from .synthetic import BACKGROUND_VALUE_RANGE, CATEGORIES, MIN_IMAGE_SIZE, NATIVE_SIZE, random_color, sample_layout, split_seed

STUFF_CATEGORIES: dict[int, str] = {6: "sky", 7: "grass", 8: "sand"}
STUFF_HUES: dict[int, tuple[float, float]] = {6: (0.55, 0.66), 7: (0.25, 0.40), 8: (0.04, 0.11)}
STUFF_SATURATION = (0.5, 0.9)
MAX_BANDS = 3
BOUNDARY_RANGE = (0.2, 0.8)  # mean height of a band boundary, as a fraction of the side
WAVE_AMPLITUDE = (0.02, 0.08)  # boundary waviness, fraction of the side
WAVE_PERIOD = (0.5, 2.0)  # fraction of the side
SKY_GRADIENT = 20.0  # grey levels from top to bottom of the image
GRASS_NOISE = 14  # per-pixel uniform noise in [-14, 14]
SAND_STRIPES = (15.0, (3, 7))  # amplitude in grey levels, period range in px
VOID_LINES = (0, 3)  # clutter lines (void pixels) per image
ID_STRIDE = 1000  # segment id = category_id * ID_STRIDE (+ k + 1 for things)
_LAYOUT_STREAM, _PAINT_STREAM = 0, 1


def panoptic_categories_json() -> list[dict[str, Any]]:
    """The ``categories`` of the synthetic panoptic set: the five shapes (things) and the three stuff classes."""
    things = [{"id": cid, "name": name, "supercategory": "shape", "isthing": 1} for cid, name in CATEGORIES.items()]
    stuff = [{"id": cid, "name": name, "supercategory": "background", "isthing": 0} for cid, name in STUFF_CATEGORIES.items()]
    return things + stuff


def _bands(rng: np.random.Generator, size: int) -> tuple[list[int], np.ndarray]:
    """Stuff classes of the bands, top to bottom, and the band index of every pixel int [S, S]."""
    classes = [int(c) for c in rng.permutation(list(STUFF_CATEGORIES))[: int(rng.integers(1, MAX_BANDS + 1))]]
    x = np.arange(size, dtype=np.float64)
    boundaries = []
    for _ in range(len(classes) - 1):
        mean = rng.uniform(*BOUNDARY_RANGE) * size
        amplitude, period = rng.uniform(*WAVE_AMPLITUDE) * size, rng.uniform(*WAVE_PERIOD) * size
        boundaries.append(mean + amplitude * np.sin(2 * math.pi * x / period + rng.uniform(0, 2 * math.pi)))
    rows = np.arange(size, dtype=np.float64)[:, None]
    ordered = np.sort(np.array(boundaries).reshape(-1, size), axis=0)  # boundaries never cross
    band = (rows[None, :, :] >= ordered[:, None, :]).sum(0) if boundaries else np.zeros((size, size), dtype=np.int64)
    return classes, band


def _stuff_texture(rng: np.random.Generator, category_id: int, size: int) -> np.ndarray:
    """float32 [S, S, 3]: the class's colour family and texture over the whole image."""
    hue = rng.uniform(*STUFF_HUES[category_id])
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*STUFF_SATURATION), rng.uniform(*BACKGROUND_VALUE_RANGE))) * 255
    image = np.broadcast_to(colour.astype(np.float32), (size, size, 3)).copy()
    rows = np.arange(size, dtype=np.float32)[:, None, None]
    if STUFF_CATEGORIES[category_id] == "sky":
        image += SKY_GRADIENT * (rows / size - 0.5)
    elif STUFF_CATEGORIES[category_id] == "grass":
        image += rng.integers(-GRASS_NOISE, GRASS_NOISE + 1, size=(size, size, 3)).astype(np.float32)
    else:
        amplitude, (low, high) = SAND_STRIPES
        image += amplitude * np.sin(2 * math.pi * rows / rng.uniform(low, high))
    return image


def render_panoptic(seed: int, index: int, image_size: int = NATIVE_SIZE) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Image ``index`` of the set with seed ``seed``: RGB uint8 [S, S, 3], segment ids int64 [S, S], segments_info."""
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"synthetic image_size must be >= {MIN_IMAGE_SIZE} px, got {image_size}")
    layout_rng = np.random.default_rng([seed, index, _LAYOUT_STREAM])
    paint_rng = np.random.default_rng([seed, index, _PAINT_STREAM])
    shapes, owner = sample_layout(layout_rng, image_size)
    classes, band = _bands(layout_rng, image_size)

    image = np.zeros((image_size, image_size, 3), dtype=np.float32)
    ids = np.zeros((image_size, image_size), dtype=np.int64)
    for k, category_id in enumerate(classes):
        region = band == k
        image[region] = _stuff_texture(paint_rng, category_id, image_size)[region]
        ids[region] = category_id * ID_STRIDE
    for _ in range(int(layout_rng.integers(VOID_LINES[0], VOID_LINES[1] + 1))):  # clutter: void pixels
        (xa, ya), (xb, yb) = layout_rng.uniform(0, image_size, size=(2, 2))
        n = int(max(abs(xb - xa), abs(yb - ya))) + 1
        cols = np.clip(np.round(np.linspace(xa, xb, n)).astype(int), 0, image_size - 1)
        rows = np.clip(np.round(np.linspace(ya, yb, n)).astype(int), 0, image_size - 1)
        image[rows, cols] = random_color(paint_rng, (0.0, 1.0), BACKGROUND_VALUE_RANGE)
        ids[rows, cols] = 0
    for k, shape in enumerate(shapes):
        visible = owner == k
        image[visible] = shape.color
        ids[visible] = shape.category_id * ID_STRIDE + k + 1

    segments = []
    for segment_id, category_id in [(s.category_id * ID_STRIDE + k + 1, s.category_id) for k, s in enumerate(shapes)] + \
                                   [(c * ID_STRIDE, c) for c in classes]:
        mask = ids == segment_id
        if not mask.any():
            continue
        segments.append({"id": int(segment_id), "category_id": int(category_id), "iscrowd": 0, "area": int(mask.sum()),
                         "bbox": segment_bbox(mask)})
    return np.clip(np.round(image), 0, 255).astype(np.uint8), ids, segments


def write_panoptic_folder(
    out_dir: str | Path, num_train: int = 2000, num_val: int = 200, seed: int = 0, image_size: int = NATIVE_SIZE
) -> Path:
    """Write a synthetic panoptic dataset in the generic panoptic layout and return ``out_dir``.

    Creates ``images/{train,val}_NNNNNN.png``, ``panoptic/{train,val}_NNNNNN.png`` (segment ids) and
    ``annotations/panoptic_{train,val}.json``; the splits use ``split_seed(seed, "train")`` and
    ``split_seed(seed, "val")``. Train with ``--dataset_file coco_panoptic --coco_path out_dir``.
    """
    out = Path(out_dir)
    for image_set, count in (("train", num_train), ("val", num_val)):
        files = generic_panoptic_split_files(out, image_set)
        for folder in (files.images_dir, files.png_dir, files.ann_file.parent):
            make_output_folder(folder, what=str(out))
        split = split_seed(seed, image_set)
        images, annotations = [], []
        for i in range(count):
            name = f"{image_set}_{i:06d}.png"
            image, ids, segments = render_panoptic(split, i, image_size)
            for folder, pixels in ((files.images_dir, image), (files.png_dir, id2rgb(ids))):
                with writing(folder / name, what="image") as path:  # whole or absent, whatever happens
                    PIL.Image.fromarray(pixels).save(path, format="PNG", compress_level=1)
            images.append({"id": i + 1, "file_name": name, "width": image_size, "height": image_size})
            annotations.append({"image_id": i + 1, "file_name": name, "segments_info": segments})
        content = {"info": {"description": f"torchdetr synthetic panoptic shapes (seed {seed}, {image_size} px)"},
                   "images": images, "annotations": annotations, "categories": panoptic_categories_json()}
        text = json.dumps(content).encode()
        write_atomic(files.ann_file, lambda f, text=text: f.write(text), what="annotations")
    return out
