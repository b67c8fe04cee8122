"""Per-cell detection head on the encoder memory (class scores and a box for every feature cell).

Used by the two-stage anchor variant (its top cells become the decoder's anchors) and, training only,
as dense one-to-many supervision of plain DETR (``training/dense.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .detr import MLP

CELL_ANCHOR_SIZE = 0.2  # boxes are predicted relative to (cell centre, this size)
FOCAL_PRIOR_BIAS = -4.6  # log(0.01 / 0.99): every class starts at a 1 % probability
LOGIT_EPS = 1e-5  # boxes are clamped to [eps, 1 − eps] before torch.logit (inverse sigmoid)


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
    """Class scores (K real classes) and a box for every encoder cell."""

    def __init__(self, hidden_dim: int, num_classes: int) -> None:
        super().__init__()
        self.class_head = nn.Linear(hidden_dim, num_classes)
        self.box_head = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.constant_(self.class_head.bias, FOCAL_PRIOR_BIAS)
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
