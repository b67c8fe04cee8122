"""Padded batches (a batch of images of different sizes as one tensor plus a padding mask), and the
COCO panoptic id-map encoding (a segment id stored as the colour of its pixels in a PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


class NestedTensor:
    """A padded batch: ``tensors`` [B, C, H, W] (zero padded) and ``mask`` [B, H, W] (True = padding)."""

    __slots__ = ("mask", "tensors")

    def __init__(self, tensors: Tensor, mask: Tensor | None) -> None:
        self.tensors = tensors
        self.mask = mask

    def to(self, device: torch.device | str, non_blocking: bool = False) -> NestedTensor:
        mask = self.mask.to(device, non_blocking=non_blocking) if self.mask is not None else None
        return NestedTensor(self.tensors.to(device, non_blocking=non_blocking), mask)

    def decompose(self) -> tuple[Tensor, Tensor | None]:
        """``(tensors, mask)``."""
        return self.tensors, self.mask

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """Unpadded (H, W) of every image, read from the mask."""
        if self.mask is None:
            h, w = self.tensors.shape[-2:]
            return [(int(h), int(w))] * self.tensors.shape[0]
        valid = ~self.mask
        heights = valid.any(dim=2).sum(dim=1)
        widths = valid.any(dim=1).sum(dim=1)
        return [(int(h), int(w)) for h, w in zip(heights, widths)]

    def __repr__(self) -> str:
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={None if self.mask is None else tuple(self.mask.shape)})"


def nested_tensor_from_tensor_list(tensor_list: Sequence[Tensor] | Tensor) -> NestedTensor:
    """Pad [C, H_i, W_i] tensors to the largest H and W of the list (zeros), as the original does.

    Returns a NestedTensor with ``tensors`` [B, C, H_max, W_max] and ``mask`` [B, H_max, W_max]
    (True on padding). Sizes are not rounded up: the model's outputs depend on the exact padding.
    Also pads lists of [N_i, H_i, W_i] target masks (the criterion uses this for mask losses).
    """
    if isinstance(tensor_list, Tensor):
        if tensor_list.dim() != 4:
            raise ValueError(
                f"expected a [B, 3, H, W] image batch, got a tensor of shape {tuple(tensor_list.shape)}"
            )
        b, _, h, w = tensor_list.shape
        return NestedTensor(tensor_list, torch.zeros((b, h, w), dtype=torch.bool, device=tensor_list.device))
    if len(tensor_list) == 0:
        raise ValueError("cannot build a batch from an empty list of images")
    for i, t in enumerate(tensor_list):
        if not isinstance(t, Tensor) or t.dim() != 3:
            shape: Any = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"image {i}: expected a [C, H, W] tensor, got {shape}")
    max_size = [max(sizes) for sizes in zip(*[t.shape for t in tensor_list])]
    first = tensor_list[0]
    batch_shape = [len(tensor_list), *max_size]
    tensors = torch.zeros(batch_shape, dtype=first.dtype, device=first.device)
    mask = torch.ones((len(tensor_list), max_size[1], max_size[2]), dtype=torch.bool, device=first.device)
    for img, padded, m in zip(tensor_list, tensors, mask):
        padded[: img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return NestedTensor(tensors, mask)


def as_nested_tensor(samples: NestedTensor | Tensor | Sequence[Tensor]) -> NestedTensor:
    """Accept a NestedTensor, a [B, 3, H, W] tensor or a list of [3, H, W] tensors."""
    if isinstance(samples, NestedTensor):
        return samples
    return nested_tensor_from_tensor_list(samples)


def collate_fn(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[NestedTensor, list[dict[str, Tensor]]]:
    """DataLoader collate: list of (image [3,H,W], target) → (NestedTensor, list of targets)."""
    images, targets = zip(*batch)
    return nested_tensor_from_tensor_list(list(images)), list(targets)


# ----------------------------------------------------------------------------------------------
# COCO panoptic PNGs: segment id = R + 256·G + 256²·B
# ----------------------------------------------------------------------------------------------
RGB_BASE = 256


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """Panoptic id map [H, W] (non-negative ints) → RGB [H, W, 3] uint8 with id = R + 256·G + 256²·B."""
    id_map = np.asarray(id_map).astype(np.int64, copy=True)
    rgb = np.zeros((*id_map.shape, 3), dtype=np.uint8)
    for i in range(3):
        rgb[..., i] = id_map % RGB_BASE
        id_map //= RGB_BASE
    return rgb


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """RGB [H, W, 3] → id map [H, W] int64 (the inverse of :func:`id2rgb`)."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + RGB_BASE * rgb[..., 1] + RGB_BASE * RGB_BASE * rgb[..., 2]
