"""Attention weights of a DETR model, captured with forward hooks (the model is left unchanged).

The last encoder layer's self-attention gives, for every feature cell, a distribution over all
cells; the last decoder layer's cross-attention gives, for every object query, a distribution
over the feature cells (padding cells get zero weight). Both are averaged over heads, as in the
original hands-on notebook.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from .detection import Detection


@dataclass
class CapturedAttention:
    """Raw captures of one forward pass: ``encoder`` [B, HW, HW] (None without encoder layers),
    ``decoder`` [B, Q, HW], ``mask`` [B, h, w] (True = padding) and the feature grid (h, w)."""

    encoder: Tensor | None = None
    decoder: Tensor | None = None
    mask: Tensor | None = None
    feature_size: tuple[int, int] = (0, 0)


def _detr_core(model: nn.Module) -> nn.Module:
    """The DETR module (DETRsegm keeps it under ``.detr``)."""
    core = getattr(model, "detr", model)
    if not hasattr(core, "transformer"):
        raise ConfigError(f"{type(model).__name__} is not a DETR model (no transformer)")
    return core


def _force_weights(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Pre-hook: make nn.MultiheadAttention return head-averaged weights."""
    kwargs = dict(kwargs, need_weights=True, average_attn_weights=True)
    return args, kwargs


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[CapturedAttention]:
    """Record the last encoder/decoder attention weights of the forward passes run inside the block.

    Works for DETR and DETRsegm. The hooks are removed when the block ends, even on error.
    """
    core = _detr_core(model)
    transformer = core.transformer
    captured = CapturedAttention()

    def on_backbone(_module: nn.Module, _args: tuple, output: tuple[list, list]) -> None:
        encoded_map = output[0][-1]  # the transformer encodes the backbone's last feature map
        captured.feature_size = (int(encoded_map.tensors.shape[-2]), int(encoded_map.tensors.shape[-1]))
        captured.mask = None if encoded_map.mask is None else encoded_map.mask.detach()

    def on_encoder(_module: nn.Module, _args: tuple, output: tuple[Tensor, Tensor]) -> None:
        captured.encoder = output[1].detach()

    def on_decoder(_module: nn.Module, _args: tuple, output: tuple[Tensor, Tensor]) -> None:
        captured.decoder = output[1].detach()

    handles = [core.backbone.register_forward_hook(on_backbone)]
    try:
        if len(transformer.encoder.layers):
            encoder_attn = transformer.encoder.layers[-1].self_attn
            handles.append(encoder_attn.register_forward_pre_hook(_force_weights, with_kwargs=True))
            handles.append(encoder_attn.register_forward_hook(on_encoder))
        decoder_attn = transformer.decoder.layers[-1].multihead_attn
        handles.append(decoder_attn.register_forward_pre_hook(_force_weights, with_kwargs=True))
        handles.append(decoder_attn.register_forward_hook(on_decoder))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class AttentionMaps:
    """Attention of one image, on the feature grid of h × w cells.

    - ``encoder`` [h, w, h, w]: ``encoder[i, j]`` is cell (i, j)'s self-attention over all cells
      (None for a model without encoder layers);
    - ``decoder`` [Q, h, w]: each query's cross-attention over the cells (sums to 1 over ``valid``);
    - ``valid`` [h, w]: True for cells of the image (False for padding);
    - ``input_size`` (H', W'): the resized image the model saw; ``image_size`` (H, W): the original;
    - ``detections``: the kept detections (``Detection.query`` indexes ``decoder``).
    """

    encoder: Tensor | None
    decoder: Tensor
    valid: Tensor
    input_size: tuple[int, int]
    image_size: tuple[int, int]
    detections: list[Detection] = field(default_factory=list)

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the feature grid."""
        return (int(self.decoder.shape[-2]), int(self.decoder.shape[-1]))

    @property
    def stride(self) -> int:
        """Pixels of the resized input per feature cell (32, or 16 for DC5 models)."""
        h, w = self.feature_size
        ratio = max(self.input_size[0] / h, self.input_size[1] / w)
        return 2 ** round(math.log2(ratio))

    def feature_cell(self, x: float, y: float) -> tuple[int, int]:
        """Feature cell (row, column) containing the point (x, y) given in original image pixels."""
        height, width = self.image_size
        if not (0 <= x < width and 0 <= y < height):
            raise ConfigError(f"point ({x:g}, {y:g}) is outside the image ({width} x {height} pixels)")
        h, w = self.feature_size
        scale_y, scale_x = self.input_size[0] / height, self.input_size[1] / width
        row = min(h - 1, int(y * scale_y // self.stride))
        col = min(w - 1, int(x * scale_x // self.stride))
        return row, col

    def encoder_map(self, x: float, y: float, direction: str = "to") -> Tensor:
        """[h, w] encoder self-attention at the feature cell containing image point (x, y).

        ``direction="to"`` (the original notebook's view): how much each cell attends to the
        point; ``"from"``: where the point attends (a distribution summing to 1 over valid cells).
        """
        if self.encoder is None:
            raise ConfigError("this model has no encoder layers, so no encoder self-attention")
        row, col = self.feature_cell(x, y)
        if direction == "to":
            return self.encoder[..., row, col]
        if direction == "from":
            return self.encoder[row, col]
        raise ConfigError(f"direction must be 'to' or 'from', got {direction!r}")
