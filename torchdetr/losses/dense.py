"""The dense head's loss: one-to-many supervision of every encoder cell (the head: ``models.heads.DenseHead``).

DETR's set loss reaches the backbone only through a handful of matched queries per image; from
random weights that signal is too weak to shape features quickly. Collaborative/hybrid-assignment
DETRs (Co-DETR, Zong et al. 2023; H-DETR, Jia et al. 2023) add dense one-to-many supervision on the
encoder output. This is the simplest form of that idea: every cell of the encoder memory whose centre
falls in the central part of a ground-truth box is a positive for it (the cell containing the box
centre always is; a cell claimed by several boxes goes to the smallest), and a small head predicts,
for every cell, sigmoid class scores and a box relative to the cell. Losses: sigmoid focal over all
valid cells, L1 + GIoU on positives, each normalised by the number of positive cells.

For plain DETR the head is training-only (``training.queries``: inference, checkpoints of the model and
exports are unchanged); two-stage anchor models (``--two_stage``) have it built in and use it for query
selection.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from ..models.heads import DenseOutputs

__all__ = ["assign_cells", "dense_loss", "dense_loss_weights"]

CENTRE_REGION = 0.25  # positives: cell centres within ±25 % of the box size around the box centre
# the dense head's focal class loss is weighted 2 × the set loss's class weight (DINO's encoder loss
# weight 2 with ce weight 1); its box losses take the set loss's weights
DENSE_CLASS_WEIGHT_FACTOR = 2.0


def dense_loss_weights(weight_dict: dict[str, float]) -> dict[str, float]:
    """``dense_loss``'s class/bbox/giou weights from the set criterion's ``weight_dict``."""
    return {"class_weight": DENSE_CLASS_WEIGHT_FACTOR * weight_dict["loss_ce"],
            "bbox_weight": weight_dict["loss_bbox"], "giou_weight": weight_dict["loss_giou"]}


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
    batch_index, cell_index = positive.nonzero(as_tuple=True)
    # ground truth of every positive cell, in the same (image, cell) order
    matched = torch.cat([t["boxes"][assigned[b][positive[b]]] for b, t in enumerate(targets)])
    labels = torch.cat([t["labels"][assigned[b][positive[b]]] for b, t in enumerate(targets)])
    onehot = torch.zeros_like(dense.logits)
    onehot[batch_index, cell_index, labels] = 1.0
    valid = dense.valid
    loss_cls = sigmoid_focal_loss(dense.logits[valid], onehot[valid], alpha=focal_alpha, reduction="sum") / num_pos
    if len(matched) == 0:
        # no positive cell: the box losses are 0, kept in the graph (as an exact zero) so that the box branch
        # takes part in every step, as distributed training (DDP) requires of each process
        return class_weight * loss_cls + dense.boxes.sum() * 0.0
    predicted = dense.boxes[positive]
    loss_l1 = (predicted - matched).abs().sum() / num_pos
    loss_giou = generalized_box_iou_loss(box_convert(predicted, "cxcywh", "xyxy"), box_convert(matched, "cxcywh", "xyxy"),
                                         reduction="sum") / num_pos
    return class_weight * loss_cls + bbox_weight * loss_l1 + giou_weight * loss_giou
