"""A grid of augmented training images with their ground-truth boxes (``detr data preview``): what the model sees.

Each row is one image: the original, then draws of the augmentation. Every panel is the same size (the
picture scaled to fit, centred) with a caption: the picture's real size in pixels, its boxes, and how
many boxes left the image and were dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from ..data.augment import PreviewSample
from .draw import draw_detections

PANEL_SIDE = 256  # pixels of the square area each picture is fitted into
CAPTION_HEIGHT = 18
GAP = 6
BACKGROUND = (255, 255, 255)
LETTERBOX = (40, 40, 40)


class _Box:
    """A ground-truth box for ``draw_detections``."""

    def __init__(self, box: Sequence[float], label: int, name: str) -> None:
        self.box, self.label, self.name, self.score = tuple(float(v) for v in box), int(label), name, 1.0


def panel(sample: PreviewSample, names: Mapping[int, str]) -> Image.Image:
    """One picture with its boxes, scaled to fit ``PANEL_SIDE``², with its caption below."""
    boxes = [_Box(b, label, names.get(int(label), str(int(label)))) for b, label in zip(sample.boxes.tolist(),
                                                                                           sample.labels.tolist())]
    image = sample.image.convert("RGB")
    scale = PANEL_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(size, Image.Resampling.BILINEAR)
    drawn = draw_detections(scaled, [_Box([v * scale for v in b.box], b.label, b.name) for b in boxes],
                            show_scores=False)
    canvas = Image.new("RGB", (PANEL_SIDE, PANEL_SIDE + CAPTION_HEIGHT), BACKGROUND)
    canvas.paste(Image.new("RGB", (PANEL_SIDE, PANEL_SIDE), LETTERBOX), (0, 0))
    canvas.paste(drawn, ((PANEL_SIDE - size[0]) // 2, (PANEL_SIDE - size[1]) // 2))
    ImageDraw.Draw(canvas).text((2, PANEL_SIDE + 2), sample.caption, fill=(0, 0, 0),
                                font=ImageFont.load_default(size=CAPTION_HEIGHT - 6))
    return canvas


def grid_size(rows: int, columns: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a grid of ``rows`` × ``columns`` panels."""
    return (columns * PANEL_SIDE + (columns + 1) * GAP, rows * (PANEL_SIDE + CAPTION_HEIGHT) + (rows + 1) * GAP)


def render_preview(rows: Sequence[Sequence[PreviewSample]], names: Mapping[int, str]) -> Image.Image:
    """The grid: one row per image (original first), one column per draw."""
    columns = max((len(row) for row in rows), default=0)
    grid = Image.new("RGB", grid_size(len(rows), columns), BACKGROUND)
    for r, row in enumerate(rows):
        for c, sample in enumerate(row):
            grid.paste(panel(sample, names), (GAP + c * (PANEL_SIDE + GAP), GAP + r * (PANEL_SIDE + CAPTION_HEIGHT + GAP)))
    return grid
