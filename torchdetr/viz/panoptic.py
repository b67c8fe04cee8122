"""Panoptic segmentations drawn on an image: one colour per segment, outlines, and class names.

Stuff segments take their class's colour (:func:`.draw.class_color`); thing segments the same colour made
lighter or darker per instance, so that neighbouring objects of one class stay apart. Segments are blended
over the image, outlined, and labelled at their most interior pixel (the farthest from their border, by a
distance transform) with the class name on a box of the segment's colour, in the detection pictures' font
(:func:`.draw.label_font`). Unlabelled (void) pixels show the image unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..data.panoptic import segment_bbox
from .draw import RGB, class_color, contrast_color, font_size_for, label_font

OVERLAY_ALPHA = 0.55  # weight of the segment colour over the image
INSTANCE_SHADES = (0.0, 0.35, -0.3, 0.6, -0.5)  # lighter (+) / darker (-) per thing instance of a class
OUTLINE: RGB = (255, 255, 255)
MIN_LABEL_AREA_FRACTION = 0.002  # segments smaller than this share of the image get no name (unreadable)


def segment_color(category_id: int, instance: int, isthing: bool) -> RGB:
    """The colour of a segment: its class colour, shaded per instance for things."""
    base = np.array(class_color(category_id), dtype=np.float64)
    shade = INSTANCE_SHADES[instance % len(INSTANCE_SHADES)] if isthing else 0.0
    target = 255.0 if shade > 0 else 0.0
    return tuple(round(float(c + abs(shade) * (target - c))) for c in base)  # type: ignore[return-value]


def _most_interior_pixel(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the pixel of ``mask`` bool [H, W] (not empty) farthest from its border (the first such pixel in
    row-major order; the image's edge counts as border).

    The distance transform runs on the mask's bounding box padded by one background pixel: every pixel outside
    the box is background and no closer than that padding, so the distances equal the whole image's.
    """
    left, top, width, height = segment_bbox(mask)
    box = mask[top:top + height, left:left + width]
    distance = ndimage.distance_transform_edt(np.pad(box, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return left + int(x), top + int(y)


def draw_panoptic(
    image: Image.Image,
    id_map: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    names: Mapping[int, str] | None = None,
    *,
    alpha: float = OVERLAY_ALPHA,
    font_size: int | None = None,
    labels: bool = True,
) -> Image.Image:
    """A copy of ``image`` with the segmentation ``id_map`` int [H, W] (the image's size; 0 or unlisted ids
    = unlabelled) coloured, outlined and named.

    ``segments``: ``segments_info`` dicts (``id``, ``category_id``, optional ``isthing``); ``names`` maps
    category ids to names (the id is shown without); ``labels=False`` draws no names.
    """
    canvas = np.asarray(image.convert("RGB"), dtype=np.float64)
    id_map = np.asarray(id_map)
    if id_map.shape != canvas.shape[:2]:
        raise ValueError(f"id_map of shape {id_map.shape} on an image of size {canvas.shape[1]}x{canvas.shape[0]}")
    names = names or {}
    colors = np.zeros_like(canvas)
    labelled = np.zeros(id_map.shape, dtype=bool)
    instances: dict[int, int] = {}
    placements = []
    for seg in segments:
        mask = id_map == seg["id"]
        if not mask.any():
            continue
        category_id, isthing = int(seg["category_id"]), bool(seg.get("isthing", True))
        instance = instances.get(category_id, 0)
        instances[category_id] = instance + 1
        color = segment_color(category_id, instance, isthing)
        colors[mask] = color
        labelled |= mask
        if labels and mask.mean() >= MIN_LABEL_AREA_FRACTION:
            placements.append((_most_interior_pixel(mask), names.get(category_id, str(category_id)), color))
    canvas[labelled] = (1 - alpha) * canvas[labelled] + alpha * colors[labelled]
    border = np.zeros(id_map.shape, dtype=bool)
    border[:, 1:] |= id_map[:, 1:] != id_map[:, :-1]
    border[1:, :] |= id_map[1:, :] != id_map[:-1, :]
    canvas[border & labelled] = OUTLINE
    result = Image.fromarray(np.round(canvas).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    font = label_font(font_size or font_size_for(result.size))
    for (x, y), text, color in placements:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(1, (bottom - top) // 5)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        x0 = min(max(0, x - w // 2), result.width - w)
        y0 = min(max(0, y - h // 2), result.height - h)
        draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=color)
        draw.text((x0 + pad - left, y0 + pad - top), text, fill=contrast_color(color), font=font)
    return result
