"""The set criterion: Hungarian-matched losses of DETR (classification, boxes, masks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from ..errors import ConfigError
from ..structures import nested_tensor_from_tensor_list
from .matcher import HungarianMatcher, Indices

Targets = list[dict[str, Tensor]]


@torch.no_grad()
def top1_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Percentage of rows of ``logits`` [N, K+1] whose argmax is ``labels`` [N] (0 when N = 0)."""
    if labels.numel() == 0:
        return torch.zeros([], device=logits.device)
    correct = logits.topk(1, dim=1).indices[:, 0].eq(labels).float().sum(0)
    return correct * (100.0 / labels.size(0))


def dice_loss(inputs: Tensor, targets: Tensor, num_boxes: float) -> Tensor:
    """DICE loss of mask logits [N, P] against binary targets [N, P], summed and divided by num_boxes."""
    inputs = inputs.sigmoid().flatten(1)
    numerator = 2 * (inputs * targets).sum(1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_boxes


def focal_mask_loss(inputs: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2) -> Tensor:
    """Sigmoid focal loss of mask logits [N, P], averaged over pixels, summed over masks / num_boxes."""
    loss = sigmoid_focal_loss(inputs, targets, alpha=alpha, gamma=gamma, reduction="none")
    return loss.mean(1).sum() / num_boxes


def _src_permutation_idx(indices: Indices) -> tuple[Tensor, Tensor]:
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


def _tgt_permutation_idx(indices: Indices) -> tuple[Tensor, Tensor]:
    batch_idx = torch.cat([torch.full_like(tgt, i) for i, (_, tgt) in enumerate(indices)])
    tgt_idx = torch.cat([tgt for _, tgt in indices])
    return batch_idx, tgt_idx


def world_average_num_boxes(targets: Targets, device: torch.device, synchronize: bool = True) -> float:
    """Number of target boxes averaged over distributed processes (``synchronize``; else this batch's), at least 1.

    In a single process (or without ``synchronize``) the count is known on the host: no device round trip.
    """
    count = float(sum(len(t["labels"]) for t in targets))
    if not (synchronize and dist.is_available() and dist.is_initialized()):
        return max(count, 1.0)  # = the original's clamp(float32 tensor, min=1).item(): counts < 2**24 are exact
    num_boxes = torch.as_tensor([count], dtype=torch.float, device=device)
    dist.all_reduce(num_boxes)
    return torch.clamp(num_boxes / dist.get_world_size(), min=1).item()


class SetCriterion(nn.Module):
    """DETR's losses: match predictions to targets, then supervise the matched pairs.

    ``losses`` selects among "labels" (loss_ce, class_error), "cardinality" (cardinality_error),
    "boxes" (loss_bbox, loss_giou) and "masks" (loss_mask, loss_dice). Auxiliary decoder outputs
    get the same losses (without masks) with suffixes ``_0 … _{L-2}``. Targets are dicts with
    ``labels`` [M] and ``boxes`` [M, 4] (normalised cxcywh), and ``masks`` [M, H, W] for masks.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float,
        losses: Sequence[str],
        cls_loss: str = "ce",
        focal_alpha: float = 0.25,
    ) -> None:
        super().__init__()
        if cls_loss not in ("ce", "focal"):
            raise ConfigError(f"--cls_loss: unknown classification loss {cls_loss!r} (ce or focal)")
        self.cls_loss = cls_loss
        self.focal_alpha = focal_alpha
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        unknown = set(self.losses) - {"labels", "cardinality", "boxes", "masks"}
        if unknown:
            raise ValueError(f"SetCriterion: unknown loss(es) {sorted(unknown)}")
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    # -- individual losses ------------------------------------------------------------------
    def loss_labels(self, outputs, targets: Targets, indices: Indices, num_boxes: float, log: bool = True):
        """Cross-entropy over K+1 classes (no-object weighted by ``eos_coef``); ``class_error`` in %."""
        src_logits = outputs["pred_logits"]
        idx = _src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device)
        target_classes[idx] = target_classes_o
        if self.cls_loss == "focal":
            # sigmoid focal loss over the K real classes (the last, "no object", logit is unused)
            logits = src_logits[..., :-1]
            onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
            loss_ce = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=2, reduction="sum") / num_boxes
        else:
            loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
        losses = {"loss_ce": loss_ce}
        if log:
            matched = src_logits[idx][:, :-1] if self.cls_loss == "focal" else src_logits[idx]
            losses["class_error"] = 100 - top1_accuracy(matched, target_classes_o)
        return losses

    @torch.no_grad()
    def loss_cardinality(self, outputs, targets: Targets, indices: Indices, num_boxes: float):
        """L1 error between the number of non-"no object" predictions and of targets (logged only)."""
        pred_logits = outputs["pred_logits"]
        tgt_lengths = torch.as_tensor([len(v["labels"]) for v in targets], device=pred_logits.device)
        if self.cls_loss == "focal":
            card_pred = (pred_logits[..., :-1].sigmoid().max(-1).values > 0.5).sum(1)
        else:
            card_pred = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(card_pred.float(), tgt_lengths.float())}

    def loss_boxes(self, outputs, targets: Targets, indices: Indices, num_boxes: float):
        """L1 on normalised cxcywh and 1 − GIoU, each summed over matched pairs / num_boxes."""
        idx = _src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")
        giou = generalized_box_iou(box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"))
        loss_giou = 1 - torch.diag(giou)
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}

    def loss_masks(self, outputs, targets: Targets, indices: Indices, num_boxes: float):
        """Focal and DICE losses of matched masks, predictions upsampled to the padded target size."""
        if "pred_masks" not in outputs:
            raise KeyError("loss 'masks' needs 'pred_masks' in the outputs (build the model with masks=True)")
        src_idx = _src_permutation_idx(indices)
        tgt_idx = _tgt_permutation_idx(indices)
        src_masks = outputs["pred_masks"][src_idx]
        target_masks, _ = nested_tensor_from_tensor_list([t["masks"] for t in targets]).decompose()
        target_masks = target_masks.to(src_masks)[tgt_idx]
        src_masks = F.interpolate(src_masks[:, None], size=target_masks.shape[-2:], mode="bilinear", align_corners=False)
        src_masks = src_masks[:, 0].flatten(1)
        target_masks = target_masks.flatten(1).view(src_masks.shape)
        return {
            "loss_mask": focal_mask_loss(src_masks, target_masks, num_boxes),
            "loss_dice": dice_loss(src_masks, target_masks, num_boxes),
        }

    def get_loss(self, loss: str, outputs, targets: Targets, indices: Indices, num_boxes: float, **kwargs):
        loss_map = {
            "labels": self.loss_labels,
            "cardinality": self.loss_cardinality,
            "boxes": self.loss_boxes,
            "masks": self.loss_masks,
        }
        return loss_map[loss](outputs, targets, indices, num_boxes, **kwargs)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, outputs: dict, targets: Targets) -> dict[str, Tensor]:
        """All losses (unweighted) of the final layer and of every auxiliary layer."""
        outputs_without_aux = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        indices = self.matcher(outputs_without_aux, targets)
        # averaged over the processes while training (each process's share of the gradient); an evaluation
        # normalises by its own batch, so its losses are a single process's whatever the number of processes
        num_boxes = world_average_num_boxes(targets, next(iter(outputs_without_aux.values())).device,
                                            synchronize=self.training)

        losses: dict[str, Tensor] = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))

        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_indices = self.matcher(aux, targets)
            for loss in self.losses:
                if loss == "masks":
                    continue  # too costly: masks are supervised on the final layer only
                kwargs = {"log": False} if loss == "labels" else {}
                l_dict = self.get_loss(loss, aux, targets, aux_indices, num_boxes, **kwargs)
                losses.update({f"{k}_{i}": v for k, v in l_dict.items()})
        return losses

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        """Σ weight_dict[k] · losses[k] over the weighted entries (the loss that is optimised)."""
        return weighted_total(losses, self.weight_dict)


def weighted_total(losses: dict[str, Tensor], weight_dict: dict[str, float]) -> Tensor:
    """Σ weight_dict[k] · losses[k] over the entries of ``losses`` that have a weight, in ``losses``' order.

    Unweighted entries (``class_error``, ``cardinality_error``) are logged, never optimised.
    """
    return sum(losses[k] * weight_dict[k] for k in losses if k in weight_dict)


def default_weight_dict(
    *,
    cls_loss_coef: float = 1,
    bbox_loss_coef: float = 5,
    giou_loss_coef: float = 2,
    mask_loss_coef: float = 1,
    dice_loss_coef: float = 1,
    masks: bool = False,
    aux_loss: bool = True,
    dec_layers: int = 6,
) -> dict[str, float]:
    """The original weighting: ce 1, bbox 5, giou 2 (+ mask 1, dice 1), repeated for aux layers."""
    weight_dict: dict[str, float] = {"loss_ce": cls_loss_coef, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    if masks:
        weight_dict["loss_mask"] = mask_loss_coef
        weight_dict["loss_dice"] = dice_loss_coef
    if aux_loss:
        aux_weight_dict = {}
        for i in range(dec_layers - 1):
            aux_weight_dict.update({f"{k}_{i}": v for k, v in weight_dict.items()})
        weight_dict.update(aux_weight_dict)
    return weight_dict
