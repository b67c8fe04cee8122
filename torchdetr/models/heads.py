"""Prediction heads shared by the model variants: the box MLP, the focal-loss prior, the per-cell dense head.

The dense head predicts class scores and a box for every cell of the encoder memory. The two-stage
anchor variant owns one (its top cells become the decoder's anchors); plain DETR gets one during
training only (``training.queries``). Its one-to-many loss and cell assignment live in ``losses.dense``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CELL_ANCHOR_SIZE = 0.2  # boxes are predicted relative to (cell centre, this size)
LOGIT_EPS = 1e-5  # boxes are clamped to [eps, 1 − eps] before torch.logit (inverse sigmoid)
# Focal-loss prior (RetinaNet, Lin et al. 2017, §4.1; Deformable DETR): every class starts at a 1 %
# sigmoid probability, so the first focal-loss steps are not dominated by the many easy negatives.
FOCAL_PRIOR_PROBABILITY = 0.01


def focal_prior_bias(probability: float = FOCAL_PRIOR_PROBABILITY) -> float:
    """The class bias whose sigmoid is ``probability``: −log((1 − p) / p) (−4.595 for 1 %)."""
    return -math.log((1 - probability) / probability)


def init_focal_prior(classifier: nn.Linear) -> None:
    """Set every class logit's bias to the focal prior (``FOCAL_PRIOR_PROBABILITY``)."""
    nn.init.constant_(classifier.bias, focal_prior_bias())


class MLP(nn.Module):
    """A plain multi-layer perceptron with ReLU between layers (the box head uses 3 layers)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim, *hidden], [*hidden, output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


@dataclass
class DenseOutputs:
    """Per-cell predictions: ``logits`` [B, HW, K], ``boxes`` [B, HW, 4] cxcywh, cell ``centres`` [B, HW, 2]
    (normalised to the unpadded image), ``valid`` [B, HW] (False on padding), ``cell_size`` [B, 2] (w, h)."""

    logits: Tensor
    boxes: Tensor
    centres: Tensor
    valid: Tensor
    cell_size: Tensor


class DenseHead(nn.Module):
    """Class scores (K real classes, focal prior) and a box for every encoder cell.

    Boxes are predicted as a correction (in inverse-sigmoid space, zero at the start) of an anchor
    of size ``CELL_ANCHOR_SIZE`` centred on the cell.
    """

    def __init__(self, hidden_dim: int, num_classes: int) -> None:
        super().__init__()
        self.class_head = nn.Linear(hidden_dim, num_classes)
        self.box_head = MLP(hidden_dim, hidden_dim, 4, 3)
        init_focal_prior(self.class_head)
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)

    def forward(self, memory: Tensor, mask: Tensor) -> DenseOutputs:
        """memory [B, C, h, w], padding mask [B, h, w] → ``DenseOutputs``."""
        batch, _, height, width = memory.shape
        valid = ~mask
        rows = valid.any(dim=2).sum(dim=1).clamp(min=1).float()  # unpadded height in cells [B]
        cols = valid.any(dim=1).sum(dim=1).clamp(min=1).float()
        ys = (torch.arange(height, device=memory.device).float() + 0.5)[None, :, None] / rows[:, None, None]
        xs = (torch.arange(width, device=memory.device).float() + 0.5)[None, None, :] / cols[:, None, None]
        centres = torch.stack([xs.expand(batch, height, width), ys.expand(batch, height, width)], dim=-1).flatten(1, 2)
        features = memory.flatten(2).transpose(1, 2)  # [B, HW, C]
        anchors = torch.cat([centres, torch.full_like(centres, CELL_ANCHOR_SIZE)], dim=-1)
        boxes = (self.box_head(features).float() + torch.logit(anchors, LOGIT_EPS)).sigmoid()
        cell_size = torch.stack([1 / cols, 1 / rows], dim=-1)
        return DenseOutputs(self.class_head(features).float(), boxes, centres, valid.flatten(1), cell_size)
