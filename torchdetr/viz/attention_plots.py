"""The two attention figures of the original hands-on notebook, as matplotlib Figures (Agg canvas).

- ``decoder_attention_figure``: for each detection, its query's decoder cross-attention map
  beside the image with the detection's box;
- ``encoder_attention_figure``: the image with numbered reference points, surrounded by the
  encoder self-attention map at each point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle
from PIL import Image
from torch import Tensor

from ..errors import ConfigError
from ..inference.attention import AttentionMaps
from .draw import class_color

PANEL_INCHES = 3.2  # width of one panel
ATTENTION_CMAP = "viridis"
POINT_COLOR = "red"
POINT_RADIUS = 1 / 80  # of the longest image side
MAX_DETECTIONS = 10
DEFAULT_NUM_POINTS = 4
FALLBACK_POINTS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))  # fractions of (W, H)


def _valid_crop(attention: Tensor, valid: Tensor) -> np.ndarray:
    """[h, w] map → numpy map restricted to the rows/columns holding image cells."""
    rows = valid.any(dim=1).nonzero().flatten()
    cols = valid.any(dim=0).nonzero().flatten()
    if len(rows) == 0 or len(cols) == 0:
        return attention.numpy()
    return attention[: int(rows[-1]) + 1, : int(cols[-1]) + 1].numpy()


def _rgb(label: int) -> tuple[float, float, float]:
    r, g, b = class_color(label)
    return (r / 255, g / 255, b / 255)


def _grid_rectangle(box: Sequence[float], maps: AttentionMaps, color) -> Rectangle:
    """A box in image pixels drawn on the feature grid (cell (i, j) is centred at x = j, y = i)."""
    scale_x = maps.input_size[1] / maps.image_size[1] / maps.stride
    scale_y = maps.input_size[0] / maps.image_size[0] / maps.stride
    x1, y1, x2, y2 = box
    return Rectangle((x1 * scale_x - 0.5, y1 * scale_y - 0.5), (x2 - x1) * scale_x, (y2 - y1) * scale_y,
                     fill=False, color=color, linewidth=1.5, linestyle="--")


def decoder_attention_figure(image: Image.Image, maps: AttentionMaps, max_detections: int = MAX_DETECTIONS) -> Figure:
    """One row per detection (highest scores first, at most ``max_detections``): the query's
    cross-attention map [h, w] on the left (the box dashed, in feature-grid coordinates), the image
    with the detection's box on the right."""
    detections = maps.detections[:max_detections]
    width, height = image.size
    panel_h = PANEL_INCHES * height / width
    if not detections:
        fig = Figure(figsize=(PANEL_INCHES * 1.5, panel_h * 1.5 + 0.4), layout="constrained")
        ax = fig.add_subplot()
        ax.imshow(image)
        ax.set_title("no detections above the threshold")
        ax.axis("off")
        return fig
    fig = Figure(figsize=(2 * PANEL_INCHES, len(detections) * (panel_h + 0.35)), layout="constrained")
    axes = fig.subplots(len(detections), 2, squeeze=False)
    for (ax_map, ax_img), det in zip(axes, detections):
        attention = _valid_crop(maps.decoder[det.query], maps.valid)
        ax_map.imshow(attention, cmap=ATTENTION_CMAP, interpolation="nearest")
        ax_map.add_patch(_grid_rectangle(det.box, maps, _rgb(det.label)))
        ax_map.set_xlim(-0.5, attention.shape[1] - 0.5)  # the box may reach past the grid: keep the map's extent
        ax_map.set_ylim(attention.shape[0] - 0.5, -0.5)
        ax_map.set_title(f"query {det.query}: decoder attention", fontsize=9)
        ax_img.imshow(image)
        x1, y1, x2, y2 = det.box
        ax_img.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=_rgb(det.label), linewidth=2.5))
        ax_img.set_title(f"{det.name} {det.score:.2f}", fontsize=9)
        for ax in (ax_map, ax_img):
            ax.axis("off")
    return fig


def default_reference_points(maps: AttentionMaps, count: int = DEFAULT_NUM_POINTS) -> list[tuple[float, float]]:
    """Centres (x, y) of the ``count`` best detections, or fixed points at the image quarters when
    there is no detection."""
    if maps.detections:
        return [((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in maps.detections[:count]]
    height, width = maps.image_size
    return [(fx * width, fy * height) for fx, fy in FALLBACK_POINTS[:count]]


def encoder_attention_figure(
    image: Image.Image, maps: AttentionMaps, points: Sequence[tuple[float, float]], direction: str = "to"
) -> Figure:
    """The image (centre, with numbered points) and the encoder self-attention map at each point.

    Maps are placed in columns on the left and right of the image, two per column, as in the
    original notebook; ``direction`` is passed to ``AttentionMaps.encoder_map``.
    """
    if not points:
        raise ConfigError("encoder attention needs at least one reference point")
    side_columns = math.ceil(len(points) / 2)
    left = math.ceil(side_columns / 2)
    width, height = image.size
    map_h = PANEL_INCHES * height / width
    fig = Figure(figsize=(PANEL_INCHES * (side_columns + 2), 2 * (map_h + 0.35)), layout="constrained")
    grid = fig.add_gridspec(2, side_columns + 2)
    ax_img = fig.add_subplot(grid[:, left:left + 2])
    ax_img.imshow(image)
    ax_img.axis("off")
    ax_img.set_title("reference points", fontsize=10)
    columns = [*range(left), *range(left + 2, side_columns + 2)]
    for k, (x, y) in enumerate(points):
        ax = fig.add_subplot(grid[k % 2, columns[k // 2]])
        attention = maps.encoder_map(x, y, direction)
        ax.imshow(_valid_crop(attention, maps.valid), cmap=ATTENTION_CMAP, interpolation="nearest")
        row, col = maps.feature_cell(x, y)
        ax.plot([col], [row], marker="+", color=POINT_COLOR, markersize=10, markeredgewidth=2)
        ax.set_title(f"{k + 1}: self-attention at ({x:.0f}, {y:.0f})", fontsize=9)
        ax.axis("off")
        ax_img.add_patch(Circle((x, y), radius=max(width, height) * POINT_RADIUS, color=POINT_COLOR))
        ax_img.annotate(str(k + 1), (x, y), xytext=(6, 6), textcoords="offset points", color="white",
                        fontsize=10, fontweight="bold",
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": POINT_COLOR, "edgecolor": "none"})
    return fig

