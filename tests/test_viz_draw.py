"""Rendering detections with Pillow: pixel checks at known box positions, colours, labels, clipping."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from torchdetr.viz.draw import (
    BLACK,
    PALETTE,
    WHITE,
    class_color,
    contrast_color,
    draw_detections,
    line_width_for,
)


@dataclass
class Det:
    box: tuple[float, float, float, float]
    score: float
    label: int
    name: str


def _pixel(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


@pytest.mark.parametrize("background", [(10, 10, 10), (245, 245, 245), (128, 128, 128)])
def test_box_edges_have_the_class_colour_and_a_contrasting_halo(background):
    image = Image.new("RGB", (200, 160), background)
    det = Det((40, 60, 150, 140), 0.9, 3, "thing")
    out = draw_detections(image, [det], line_width=4)
    color = class_color(3)
    x1, y1, x2, y2 = 40, 60, 150, 140
    mid_y, mid_x = (y1 + y2) // 2, (x1 + x2) // 2
    # the 4-pixel line runs inward from each edge
    for x in range(x1, x1 + 4):
        assert _pixel(out, x, mid_y) == color
    for x in range(x2 - 3, x2 + 1):
        assert _pixel(out, x, mid_y) == color
    assert _pixel(out, mid_x, y2) == color
    # a 1-pixel halo in the contrasting colour on both sides of the line
    halo = contrast_color(color)
    assert _pixel(out, x1 - 1, mid_y) == halo
    assert _pixel(out, x1 + 4, mid_y) == halo
    # inside and far outside the box: untouched
    assert _pixel(out, mid_x, mid_y) == background
    assert _pixel(out, 5, 155) == background
    assert out.size == image.size
    assert _pixel(image, x1, mid_y) == background  # the input is not modified


def test_label_sits_on_a_filled_box_of_the_class_colour_with_contrasting_text():
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    det = Det((50, 100, 250, 190), 0.87, 1, "person")
    out = np.asarray(draw_detections(image, [det]))
    # the label is just above the box's top-left corner
    region = out[60:100, 50:200].reshape(-1, 3)
    colors = {tuple(int(c) for c in px) for px in region}
    assert class_color(1) in colors
    text = contrast_color(class_color(1))
    assert any(np.abs(np.asarray(px) - np.asarray(text)).sum() < 60 for px in colors), "no text pixels in the label"


def test_label_moves_inside_when_the_box_touches_the_top():
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    out = np.asarray(draw_detections(image, [Det((50, 0, 250, 190), 0.5, 2, "car")]))
    assert (out[5:20, 60:100] == class_color(2)).all(axis=-1).any()


def test_boxes_outside_the_image_are_clipped():
    image = Image.new("RGB", (100, 80), (90, 90, 90))
    out = draw_detections(image, [Det((-30, -10, 140, 95), 0.5, 0, "a"), Det((60, 50, 20, 10), 0.4, 1, "b")])
    assert out.size == (100, 80)
    assert _pixel(out, 0, 40) == class_color(0)  # the left edge, clipped to x = 0


def test_higher_scores_are_drawn_on_top():
    image = Image.new("RGB", (120, 120), (128, 128, 128))
    low, high = Det((10, 10, 100, 100), 0.3, 0, "low"), Det((10, 10, 100, 100), 0.9, 5, "high")
    for order in ([low, high], [high, low]):
        out = draw_detections(image, order, line_width=3)
        assert _pixel(out, 11, 60) == class_color(5)


def test_palette_colours_are_stable_and_wrap():
    assert class_color(0) == PALETTE[0]
    assert class_color(len(PALETTE) + 2) == PALETTE[2]
    assert len(set(PALETTE)) == len(PALETTE)


@pytest.mark.parametrize(("color", "expected"), [((255, 255, 0), BLACK), ((0, 0, 128), WHITE), ((255, 255, 255), BLACK),
                                                 ((0, 0, 0), WHITE)])
def test_contrast_color(color, expected):
    assert contrast_color(color) == expected


def test_line_width_grows_with_image_size():
    assert line_width_for((128, 96)) >= 2
    assert line_width_for((1333, 800)) > line_width_for((320, 240))
    big = Image.new("RGB", (1200, 900), (128, 128, 128))
    out = np.asarray(draw_detections(big, [Det((100, 100, 1000, 800), 0.9, 4, "x")]))
    drawn = (out[450, 90:200] == class_color(4)).all(axis=-1).sum()
    assert drawn == line_width_for(big.size)
