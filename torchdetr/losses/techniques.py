"""Losses of the training-only queries: per-group Hungarian losses and denoising reconstruction."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .dense import dense_loss, dense_loss_weights
from .outputs import QueryLayout, TrainingOutputs
from .set_criterion import SetCriterion, weighted_total, world_average_num_boxes

Targets = list[dict[str, Tensor]]


def denoising_indices(targets: Targets, layout: QueryLayout) -> list[tuple[Tensor, Tensor]]:
    """Known assignment of denoising queries: copy d, slot j ↔ ground-truth object j (per image)."""
    indices = []
    for t in targets:
        m = len(t["labels"])
        device = t["labels"].device
        src = torch.cat([torch.arange(m, device=device) + d * layout.pad_size for d in range(layout.dn_groups)])
        tgt = torch.arange(m, device=device).repeat(layout.dn_groups)
        indices.append((src.long().cpu(), tgt.long().cpu()))
    return indices


class TrainingCriterion(nn.Module):
    """The model's ``SetCriterion`` plus ``loss_groups``, ``loss_dn`` and ``loss_dense`` (already weighted sums).

    ``loss_groups`` = Σ over extra groups of that group's weighted DETR loss (own Hungarian matching,
    aux layers included). ``loss_dn`` = weighted labels+boxes losses of the denoising queries against
    the objects they were made from, final and aux layers, normalised by the number of noised boxes.
    The primary group's entries keep their usual names, so logs compare with plain DETR.
    """

    def __init__(self, criterion: SetCriterion, group_weight: float = 1.0, dn_weight: float = 1.0,
                 dense_weight: float = 1.0) -> None:
        super().__init__()
        self.criterion = criterion
        self.weight_dict = dict(criterion.weight_dict)
        self.weight_dict["loss_groups"] = group_weight
        self.weight_dict["loss_dn"] = dn_weight
        self.weight_dict["loss_dense"] = dense_weight

    def forward(self, predictions: TrainingOutputs, targets: Targets) -> dict[str, Tensor]:
        losses = self.criterion(predictions.outputs, targets)
        if predictions.group_outputs:
            losses["loss_groups"] = sum(self.criterion.weighted_total(self.criterion(g, targets))
                                        for g in predictions.group_outputs)
        if predictions.dn_outputs is not None:
            losses["loss_dn"] = self.denoising_loss(predictions.dn_outputs, targets, predictions.layout)
        if predictions.dense is not None:
            losses["loss_dense"] = dense_loss(predictions.dense, targets, focal_alpha=self.criterion.focal_alpha,
                                              **dense_loss_weights(self.criterion.weight_dict))
        return losses

    def denoising_loss(self, dn_outputs: dict, targets: Targets, layout: QueryLayout) -> Tensor:
        """Σ over decoder layers of the weighted labels + boxes losses, each copy paired with its own object."""
        indices = denoising_indices(targets, layout)
        num_boxes = world_average_num_boxes(targets, dn_outputs["pred_logits"].device) * layout.dn_groups
        total = torch.zeros((), device=dn_outputs["pred_logits"].device)
        for layer in [dn_outputs, *dn_outputs.get("aux_outputs", [])]:
            layer_losses = self.criterion.get_loss("labels", layer, targets, indices, num_boxes, log=False)
            layer_losses.update(self.criterion.get_loss("boxes", layer, targets, indices, num_boxes))
            total = total + weighted_total(layer_losses, self.criterion.weight_dict)
        return total

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        """The set criterion's weighted sum, over this criterion's ``weight_dict`` (technique losses included)."""
        return weighted_total(losses, self.weight_dict)
