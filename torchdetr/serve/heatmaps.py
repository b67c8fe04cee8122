"""Attention maps as JSON grids, each with the image region it covers and, when asked, a PNG heatmap."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from PIL import Image
from torch import Tensor

from ..inference.attention import AttentionMaps

HEATMAP_CMAP = "viridis"  # as the attention figures of viz/
VALUE_DECIMALS = 7  # attention weights are float32; 7 decimals keep them to ~1e-7 and the JSON small


def grid_extent(maps: AttentionMaps) -> list[float]:
    """[x1, y1, x2, y2] in image pixels of the feature grid: cell (i, j) covers input pixels
    [j * stride, (j + 1) * stride) x [i * stride, (i + 1) * stride) of the resized image."""
    h, w = maps.feature_size
    scale_x = maps.image_size[1] / maps.input_size[1]
    scale_y = maps.image_size[0] / maps.input_size[0]
    return [0.0, 0.0, w * maps.stride * scale_x, h * maps.stride * scale_y]


def heatmap_png(values: np.ndarray) -> str:
    """[h, w] map → ``data:image/png;base64,...`` of h x w pixels (colormap from the map's minimum to its maximum)."""
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    normalised = (values - low) / (high - low) if high > low else np.zeros_like(values)
    rgba = (colormaps[HEATMAP_CMAP](normalised) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def map_json(values: Tensor, extent: list[float], png: bool) -> dict:
    """One [h, w] map as the API's ``AttentionMapOut`` dict."""
    array = values.float().numpy()
    return {
        "shape": list(array.shape),
        "extent": extent,
        "values": np.round(array, VALUE_DECIMALS).tolist(),
        "png": heatmap_png(array) if png else None,
    }
