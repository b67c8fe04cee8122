"""Planted models for tests: callables with DETR's output contract whose detections the test controls."""

from __future__ import annotations

import torch
from scipy import ndimage
from torch import Tensor

from torchdetr.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from torchdetr.structures import NestedTensor

NUM_QUERIES = 16
NUM_CLASSES = 2  # logits [B, Q, 3]: classes 0, 1 and "no object"
SURE, UNSURE, NOTHING = 10.0, 2.0, -10.0  # class logits; "no object" gets 0 for detected queries


def _pixels(samples: NestedTensor, b: int) -> Tensor:
    """Un-normalised RGB [3, h, w] in 0..255 of the valid (unpadded) part of image ``b``."""
    valid = ~samples.mask[b]
    h, w = int(valid.any(1).sum()), int(valid.any(0).sum())
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (samples.tensors[b, :, :h, :w].float().cpu() * std + mean) * 255


def _empty(batch: int) -> tuple[Tensor, Tensor]:
    logits = torch.full((batch, NUM_QUERIES, NUM_CLASSES + 1), NOTHING)
    logits[..., NUM_CLASSES] = SURE  # "no object"
    boxes = torch.full((batch, NUM_QUERIES, 4), 0.5)
    return logits, boxes


class FixedBoxModel:
    """Every image: one detection of class 1 at the same normalised box ``cxcywh`` (fractions of the image)."""

    def __init__(self, cxcywh: tuple[float, float, float, float]) -> None:
        self.cxcywh = cxcywh

    def __call__(self, samples: NestedTensor) -> dict[str, Tensor]:
        logits, boxes = _empty(samples.tensors.shape[0])
        logits[:, 0, 1], logits[:, 0, NUM_CLASSES] = SURE, 0.0
        boxes[:, 0] = torch.tensor(self.cxcywh)
        return {"pred_logits": logits, "pred_boxes": boxes}


class BrightBlobModel:
    """A perfect detector of bright objects: each connected blob of pixels brighter than ``level`` (any channel)
    is one detection of class 1 with the blob's exact box; blobs touching the image border are less sure
    (as a real detector is of cut-off objects)."""

    def __init__(self, level: float = 150.0) -> None:
        self.level = level

    def __call__(self, samples: NestedTensor) -> dict[str, Tensor]:
        batch = samples.tensors.shape[0]
        logits, boxes = _empty(batch)
        for b in range(batch):
            pixels = _pixels(samples, b)
            h, w = pixels.shape[1:]
            blobs, _ = ndimage.label((pixels.amax(0) > self.level).numpy())
            for q, found in enumerate(ndimage.find_objects(blobs)[:NUM_QUERIES]):
                y0, y1, x0, x1 = found[0].start, found[0].stop, found[1].start, found[1].stop
                cut = x0 == 0 or y0 == 0 or x1 == w or y1 == h
                logits[b, q, 1], logits[b, q, NUM_CLASSES] = (UNSURE if cut else SURE), 0.0
                boxes[b, q] = torch.tensor([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
        return {"pred_logits": logits, "pred_boxes": boxes}
