"""Panoptic pictures: blended segment colours, instance shades, untouched void, outlines and names."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from torchdetr.viz.draw import class_color
from torchdetr.viz.panoptic import OUTLINE, OVERLAY_ALPHA, draw_panoptic, segment_color

THING, STUFF = 3, 7


def scene():
    image = Image.fromarray(np.full((60, 80, 3), 100, dtype=np.uint8))
    ids = np.zeros((60, 80), dtype=np.int64)
    ids[:, 40:] = 9  # stuff on the right half
    ids[5:25, 5:25] = 1  # two things of one class on the left
    ids[30:55, 5:25] = 2
    segments = [{"id": 1, "category_id": THING, "isthing": True}, {"id": 2, "category_id": THING, "isthing": True},
                {"id": 9, "category_id": STUFF, "isthing": False}]
    return image, ids, segments


def test_colours_outlines_and_void():
    image, ids, segments = scene()
    out = np.asarray(draw_panoptic(image, ids, segments, labels=False)).astype(int)
    assert out.shape == (60, 80, 3)
    assert (out[ids == 0] == 100).all()  # void pixels untouched
    for seg, (y, x) in zip(segments, [(7, 7), (32, 7), (2, 78)]):  # inside, away from borders and labels
        instance = [s["id"] for s in segments if s["category_id"] == seg["category_id"]].index(seg["id"])
        color = np.array(segment_color(seg["category_id"], instance, seg["isthing"]))
        assert np.abs(out[y, x] - ((1 - OVERLAY_ALPHA) * 100 + OVERLAY_ALPHA * color)).max() <= 1
    assert segment_color(STUFF, 0, False) == class_color(STUFF)
    assert segment_color(THING, 0, True) != segment_color(THING, 1, True)  # instances of one class stay apart
    assert tuple(out[5, 15]) == OUTLINE  # the first row of a segment is its border with void
    named = np.asarray(draw_panoptic(image, ids, segments, {THING: "thing", STUFF: "stuff"}, font_size=8)).astype(int)
    y, x = 42, 15  # the most interior pixel of segment 2 carries its label box, in the segment's colour
    box = named[y - 2 : y + 3, x - 10 : x + 10].reshape(-1, 3)
    assert (np.abs(box - np.array(segment_color(THING, 1, True))).max(1) == 0).any()
    assert not np.array_equal(named, out)


def test_size_mismatch_is_refused():
    image, ids, segments = scene()
    with pytest.raises(ValueError, match="id_map of shape"):
        draw_panoptic(image, ids[:-1], segments)


def test_labels_sit_at_the_most_interior_pixel_of_the_whole_image():
    """The label position from the segment's box equals the full-image distance transform's (scipy's, the oracle)."""
    from scipy import ndimage

    from torchdetr.viz.panoptic import _most_interior_pixel

    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = np.zeros((40, 60), dtype=bool)
        for _ in range(3):  # a few random rectangles, some touching the image's edge
            y, x = rng.integers(0, 40), rng.integers(0, 60)
            mask[y:y + rng.integers(1, 25), x:x + rng.integers(1, 35)] = True
        full = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(full.argmax()), full.shape)
        assert _most_interior_pixel(mask) == (int(x), int(y))
