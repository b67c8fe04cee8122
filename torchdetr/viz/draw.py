"""Detections drawn on an image with Pillow: boxes, class names and scores, one stable colour per class.

Every box line is edged by a thin black or white halo (whichever contrasts with the class colour),
and labels sit on a filled box of the class colour with black or white text, so pictures stay
readable on dark and light images alike. Line width and text size grow with the image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

from PIL import Image, ImageDraw, ImageFont

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


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


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
    width, height = canvas.size
    lw = line_width or line_width_for(canvas.size)
    font = _font(font_size or font_size_for(canvas.size))
    draw = ImageDraw.Draw(canvas)
    ordered = sorted(detections, key=lambda d: d.score)
    placed: list[tuple[tuple[int, int, int, int], DrawableDetection]] = []
    for det in ordered:
        x1, y1, x2, y2 = _clip_box(det.box, width, height)
        color = class_color(det.label)
        halo = contrast_color(color)
        draw.rectangle((x1 - HALO_WIDTH, y1 - HALO_WIDTH, x2 + HALO_WIDTH, y2 + HALO_WIDTH), outline=halo,
                       width=lw + 2 * HALO_WIDTH)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=lw)
        placed.append(((x1, y1, x2, y2), det))
    for (x1, y1, _x2, _y2), det in placed:
        _draw_label(draw, label_text(det) if show_scores else det.name, (x1, y1), class_color(det.label), font,
                    canvas.size)
    return canvas


def _clip_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
    y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
    return x1, y1, x2, y2


def _draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    corner: tuple[int, int],
    color: RGB,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    size: tuple[int, int],
) -> None:
    """Text on a filled box of ``color`` just above the box corner (inside the box when no room)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    label_w, label_h = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = corner
    y = y - label_h if y - label_h >= 0 else y
    x = max(0, min(x, size[0] - label_w))
    draw.rectangle((x, y, x + label_w - 1, y + label_h - 1), fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill=contrast_color(color), font=font)
