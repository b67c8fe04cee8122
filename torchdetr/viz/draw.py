"""Detections drawn on an image: boxes, class names and scores, one stable colour per class.

``torchvision.utils.draw_bounding_boxes`` does the drawing. Every box line is edged by a thin black
or white halo (whichever contrasts with the class colour: the same boxes drawn one pixel larger and
wider underneath), and labels sit on a filled box of the class colour with black or white text, just
above the box (inside it when the box touches the top), so pictures stay readable on dark and light
images alike. Line width and text size grow with the image size; the text is DejaVu Sans, the
TrueType font that matplotlib ships.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image, ImageFont
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

RGB = tuple[int, int, int]

# Kelly's colours of maximum contrast, without white, black, greys and the darkest browns/olives.
PALETTE: tuple[RGB, ...] = (
    (0xF3, 0xC3, 0x00), (0x87, 0x56, 0x92), (0xF3, 0x84, 0x00), (0xA1, 0xCA, 0xF1), (0xBE, 0x00, 0x32),
    (0xC2, 0xB2, 0x80), (0x00, 0x88, 0x56), (0xE6, 0x8F, 0xAC), (0x00, 0x67, 0xA5), (0xF9, 0x93, 0x79),
    (0x60, 0x4E, 0x97), (0xF6, 0xA6, 0x00), (0xB3, 0x44, 0x6C), (0xDC, 0xD3, 0x00), (0x88, 0x2D, 0x17),
    (0x8D, 0xB6, 0x00), (0xE2, 0x58, 0x22),
)
BLACK: RGB = (0, 0, 0)
WHITE: RGB = (255, 255, 255)
LINE_WIDTH_PER_PIXEL = 1 / 250  # line width as a fraction of the longest image side
FONT_SIZE_PER_PIXEL = 1 / 45
MIN_LINE_WIDTH = 2
MIN_FONT_SIZE = 10
HALO_WIDTH = 1
LABEL_MARGIN = 1  # draw_bounding_boxes: text starts 1 px (+ line width) inside its box, background 1 px around the text
FONT_FILE = ("fonts", "ttf", "DejaVuSans.ttf")  # under matplotlib's data path


class DrawableDetection(Protocol):
    """What ``draw_detections`` needs of a detection (``torchdetr.inference.detector.Detection`` fits)."""

    box: tuple[float, float, float, float]
    score: float
    label: int
    name: str


def class_color(label: int) -> RGB:
    """The fixed colour of class id ``label`` (the palette repeats every ``len(PALETTE)`` ids)."""
    return PALETTE[int(label) % len(PALETTE)]


def contrast_color(color: RGB) -> RGB:
    """Black or white, whichever reads better on ``color`` (WCAG relative luminance)."""

    def channel(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in color)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # contrast against black is (L + 0.05) / 0.05, against white 1.05 / (L + 0.05); equal at L ≈ 0.179
    return BLACK if luminance > 0.179 else WHITE


def line_width_for(size: tuple[int, int]) -> int:
    """Box line width in pixels for an image of ``size`` (W, H)."""
    return max(MIN_LINE_WIDTH, round(max(size) * LINE_WIDTH_PER_PIXEL))


def font_size_for(size: tuple[int, int]) -> int:
    """Label text height in pixels for an image of ``size`` (W, H)."""
    return max(MIN_FONT_SIZE, round(max(size) * FONT_SIZE_PER_PIXEL))


@cache
def font_file() -> str | None:
    """Path of matplotlib's DejaVu Sans (None if absent: torchvision then uses Pillow's small fixed font)."""
    import matplotlib

    path = Path(matplotlib.get_data_path(), *FONT_FILE)
    return str(path) if path.is_file() else None


@lru_cache(maxsize=16)
def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The font ``draw_bounding_boxes`` renders labels with at ``size`` px (to measure them; the panoptic
    pictures' names use it too)."""
    path = font_file()
    return ImageFont.truetype(path, size=size) if path else ImageFont.load_default()


def label_text(detection: DrawableDetection) -> str:
    """``"name 0.97"``."""
    return f"{detection.name} {detection.score:.2f}"


def draw_detections(
    image: Image.Image,
    detections: Sequence[DrawableDetection],
    *,
    line_width: int | None = None,
    font_size: int | None = None,
    show_scores: bool = True,
) -> Image.Image:
    """A copy of ``image`` (RGB) with each detection's box (x1, y1, x2, y2 pixels) and label drawn.

    Boxes are clipped to the image. Higher-scoring detections are drawn last (on top), and all
    labels after all boxes, so no box line crosses a label. ``show_scores=False`` writes the class name
    alone (ground-truth boxes).
    """
    canvas = image.convert("RGB")  # always a new image
    if not detections:
        return canvas
    width, height = canvas.size
    lw = line_width or line_width_for(canvas.size)
    size = font_size or font_size_for(canvas.size)
    ordered = sorted(detections, key=lambda d: d.score)
    boxes = torch.tensor([_clip_box(d.box, width, height) for d in ordered])
    colors = [class_color(d.label) for d in ordered]
    texts = [label_text(d) if show_scores else d.name for d in ordered]
    pixels = pil_to_tensor(canvas)  # [3, H, W] uint8
    halo = boxes + torch.tensor([-HALO_WIDTH, -HALO_WIDTH, HALO_WIDTH, HALO_WIDTH])
    pixels = draw_bounding_boxes(pixels, halo, colors=[contrast_color(c) for c in colors], width=lw + 2 * HALO_WIDTH)
    pixels = draw_bounding_boxes(pixels, boxes, colors=colors, width=lw)
    # labels only (width 0: no outline): each anchored at a point chosen by _label_anchor
    anchors = torch.tensor([_label_anchor(text, box, label_font(size), canvas.size) for text, box in zip(texts, boxes.tolist())])
    pixels = draw_bounding_boxes(pixels, anchors, labels=texts, colors=colors, width=0, font=font_file(),
                                 font_size=size if font_file() else None,
                                 label_colors=[contrast_color(c) for c in colors], fill_labels=True)
    return to_pil_image(pixels)


def _clip_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
    y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
    return x1, y1, x2, y2


def _label_anchor(
    text: str,
    box: Sequence[int],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    size: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Degenerate box (x, y, x, y) at which ``draw_bounding_boxes`` puts the label of ``box``.

    It draws the text at (x, y) + ``LABEL_MARGIN`` on a background ``LABEL_MARGIN`` px larger than
    the text: place that background just above the box's top-left corner (inside the box when there
    is no room above), and inside the image horizontally.
    """
    left, top, right, bottom = font.getbbox(text)
    label_w = right - left + 3 * LABEL_MARGIN  # background: x + left .. x + right + 2 margins (inclusive)
    x1, y1 = box[0], box[1]
    y = y1 - bottom - 3 * LABEL_MARGIN  # background bottom (y + bottom + 2 margins) one pixel above the box
    if y + top < 0:
        y = y1 - top  # no room above: background top at the box's top edge
    x = min(max(x1, 0), size[0] - label_w) - left
    return x, y, x, y
