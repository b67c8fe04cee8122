"""A training-only dense head on the encoder memory: one-to-many supervision of every feature cell.

DETR's set loss reaches the backbone only through a handful of matched queries per image; from
random weights that signal is too weak to shape features quickly. Collaborative/hybrid-assignment
DETRs (Co-DETR, Zong et al. 2023; H-DETR, Jia et al. 2023) add dense one-to-many supervision on the
encoder output. This is the simplest form of that idea: every cell of the encoder memory whose centre
falls in the central part of a ground-truth box is a positive for it (the cell containing the box
centre always is; a cell claimed by several boxes goes to the smallest), and a small head predicts,
for every cell, sigmoid class scores and a box relative to the cell. Losses: sigmoid focal over all
valid cells, L1 + GIoU on positives, each normalised by the number of positive cells.

The head lives in ``TrainingQueries``; inference, checkpoints of the model and exports are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from ..models.anchor_detr import inverse_sigmoid
from ..models.detr import MLP

CENTRE_REGION = 0.25  # positives: cell centres within ±25 % of the box size around the box centre
CELL_ANCHOR_SIZE = 0.2  # boxes are predicted relative to (cell centre, this size)


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
        nn.init.constant_(self.class_head.bias, -4.6)  # 1 % prior, as focal-loss heads
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
        boxes = (self.box_head(features).float() + inverse_sigmoid(anchors)).sigmoid()
        cell_size = torch.stack([1 / cols, 1 / rows], dim=-1)
        return DenseOutputs(self.class_head(features).float(), boxes, centres, valid.flatten(1), cell_size)


def assign_cells(dense: DenseOutputs, targets: list[dict[str, Tensor]]) -> Tensor:
    """Index [B, HW] of the ground-truth object each cell is a positive for, −1 for negatives."""
    assigned = torch.full(dense.valid.shape, -1, dtype=torch.long, device=dense.valid.device)
    for b, target in enumerate(targets):
        boxes = target["boxes"]
        if len(boxes) == 0:
            continue
        centres = dense.centres[b]  # [HW, 2]
        half = torch.maximum(boxes[:, 2:] * CENTRE_REGION, dense.cell_size[b][None] / 2)  # [M, 2]
        inside = ((centres[:, None, :] - boxes[None, :, :2]).abs() <= half[None]).all(-1)  # [HW, M]
        inside &= dense.valid[b][:, None]
        area = (boxes[:, 2] * boxes[:, 3])[None].expand_as(inside)
        area = torch.where(inside, area, torch.full_like(area, float("inf")))
        best_area, best = area.min(dim=1)
        assigned[b] = torch.where(torch.isfinite(best_area), best, torch.full_like(best, -1))
    return assigned


def dense_loss(
    dense: DenseOutputs,
    targets: list[dict[str, Tensor]],
    *,
    class_weight: float = 2.0,
    bbox_weight: float = 5.0,
    giou_weight: float = 2.0,
    focal_alpha: float = 0.25,
) -> Tensor:
    """Weighted focal + L1 + GIoU loss of the dense head, normalised by the number of positive cells."""
    assigned = assign_cells(dense, targets)
    positive = assigned >= 0
    num_pos = max(int(positive.sum()), 1)
    onehot = torch.zeros_like(dense.logits)
    for b, target in enumerate(targets):
        cells = positive[b].nonzero().squeeze(1)
        if len(cells):
            onehot[b, cells, target["labels"][assigned[b, cells]]] = 1.0
    valid = dense.valid
    loss_cls = sigmoid_focal_loss(dense.logits[valid], onehot[valid], alpha=focal_alpha, reduction="sum") / num_pos
    if not positive.any():
        return class_weight * loss_cls
    matched = torch.cat([t["boxes"][assigned[b][positive[b]]] for b, t in enumerate(targets)])
    predicted = dense.boxes[positive]
    loss_l1 = (predicted - matched).abs().sum() / num_pos
    giou = torch.diag(generalized_box_iou(box_convert(predicted, "cxcywh", "xyxy"), box_convert(matched, "cxcywh", "xyxy")))
    loss_giou = (1 - giou).sum() / num_pos
    return class_weight * loss_cls + bbox_weight * loss_l1 + giou_weight * loss_giou
