"""Tiled inference for large images with small objects.

DETR sees a stride-32 (16 with DC5) feature map of an image resized to its input size, so objects of
a few dozen pixels in a 4K image shrink to less than one feature cell. Tiling cuts the image into
overlapping ``tile`` × ``tile`` windows, detects objects in each window at the model's input size
(a batch of windows per forward pass), shifts the boxes back to image pixels and merges the
duplicates that the overlaps produce.

The merge is class-aware non-maximum suppression, ``torchvision.ops.batched_nms``: after it no two
kept detections of the same class overlap with IoU above ``merge_iou``. We use it rather than
supervision's ``InferenceSlicer`` (or SAHI) because the slicer calls the model once per slice (no
batching across slices), works on its own ``sv.Detections`` type and would make a large dependency
of a 60-line feature; the window grid below is a few lines and the merge is the same NMS.

Windows start at evenly spread offsets from 0 to ``side - tile``, so every window is a full tile
inside the image (a side shorter than ``tile`` gets one window of that side) and neighbours overlap
by at least ``overlap`` × ``tile`` pixels: an object smaller than that overlap lies wholly inside
some window. ``full_image`` adds the whole image, resized as usual, as one more "window", so that
objects larger than a tile are also found.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.ops import batched_nms

from ..errors import ConfigError
from .detection import Detection

DEFAULT_OVERLAP = 0.2  # fraction of a tile shared with each neighbour
DEFAULT_MERGE_IOU = 0.5  # same-class detections overlapping more than this are duplicates
MIN_TILE = 16  # pixels; below this a window holds less than one DETR feature cell
Window = tuple[int, int, int, int]  # (x0, y0, x1, y1) pixel edges of a window in the image
DetectBatch = Callable[[Sequence[Image.Image]], list[list[Detection]]]


@dataclass(frozen=True)
class Tiling:
    """How to tile: window side ``tile`` (px), ``overlap`` in [0, 1), whether to add the whole image,
    and the IoU above which same-class detections are merged."""

    tile: int
    overlap: float = DEFAULT_OVERLAP
    full_image: bool = False
    merge_iou: float = DEFAULT_MERGE_IOU

    def __post_init__(self) -> None:
        if self.tile < MIN_TILE:
            raise ConfigError(f"tile must be at least {MIN_TILE} px, got {self.tile}")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 0.0 < self.merge_iou <= 1.0:
            raise ConfigError(f"merge IoU must be in (0, 1], got {self.merge_iou}")


def window_starts(side: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of windows covering ``side`` px: evenly spread over 0..side-tile, overlap ≥ ``overlap``·tile."""
    if side <= tile:
        return [0]
    stride = max(1, math.floor(tile * (1.0 - overlap)))
    count = math.ceil((side - tile) / stride) + 1
    return [round(i * (side - tile) / (count - 1)) for i in range(count)]


def tile_windows(width: int, height: int, tiling: Tiling) -> list[Window]:
    """The windows (x0, y0, x1, y1) of a ``width`` × ``height`` image, row by row."""
    xs = window_starts(width, tiling.tile, tiling.overlap)
    ys = window_starts(height, tiling.tile, tiling.overlap)
    return [(x, y, min(x + tiling.tile, width), min(y + tiling.tile, height)) for y in ys for x in xs]


def merge_detections(detections: Sequence[Detection], merge_iou: float = DEFAULT_MERGE_IOU) -> list[Detection]:
    """Class-aware NMS (``torchvision.ops.batched_nms``) over detections in one image's pixels, by decreasing score."""
    if not detections:
        return []
    boxes = torch.tensor([d.box for d in detections], dtype=torch.float64)
    scores = torch.tensor([d.score for d in detections], dtype=torch.float64)
    labels = torch.tensor([d.label for d in detections], dtype=torch.int64)
    keep = batched_nms(boxes, scores, labels, merge_iou)
    return [detections[i] for i in keep.tolist()]


def shift(detection: Detection, dx: float, dy: float) -> Detection:
    """``detection`` with its box moved by (dx, dy) pixels."""
    x1, y1, x2, y2 = detection.box
    return Detection(box=(x1 + dx, y1 + dy, x2 + dx, y2 + dy), score=detection.score, label=detection.label,
                     name=detection.name, query=detection.query)


def detect_tiled(image: Image.Image, detect: DetectBatch, tiling: Tiling, batch_size: int) -> list[Detection]:
    """Detections of one RGB image, found window by window (``batch_size`` windows per ``detect`` call).

    ``detect`` maps a batch of PIL images to one list of ``Detection`` per image, boxes in that
    image's pixels (``Detector.detect``). The result's boxes are in ``image``'s pixels, merged by
    ``merge_detections``, sorted by decreasing score; ``query`` is the query index in the window
    (or whole image) that produced the detection.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    windows = tile_windows(image.width, image.height, tiling)
    found: list[Detection] = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        for (x0, y0, _, _), in_window in zip(batch, detect([image.crop(window) for window in batch])):
            found.extend(shift(d, x0, y0) for d in in_window)
    if tiling.full_image:
        found.extend(detect([image])[0])
    return merge_detections(found, tiling.merge_iou)
