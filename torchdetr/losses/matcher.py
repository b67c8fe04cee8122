"""Hungarian matching between predictions and ground truth (one prediction per target object)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

from ..errors import ConfigError

Indices = list[tuple[Tensor, Tensor]]


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of queries to targets, per image.

    Cost = ``cost_class`` * (−p(target class)) + ``cost_bbox`` * L1(cxcywh) + ``cost_giou`` * (−GIoU).
    There are more queries than objects: unmatched queries are "no object".
    """

    def __init__(
        self,
        cost_class: float = 1,
        cost_bbox: float = 1,
        cost_giou: float = 1,
        focal: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ConfigError("--set_cost_class, --set_cost_bbox and --set_cost_giou are all 0: matching needs a non-zero cost")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal = focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def class_cost(self, out_logits: Tensor, tgt_ids: Tensor) -> Tensor:
        """[N, K+1] logits, [M] target labels → [N, M] class cost.

        Softmax (the original): −p(class). Focal (``focal=True``, sigmoid over the K real classes,
        as Deformable DETR): the focal loss of calling it that class minus that of not calling it.
        """
        if not self.focal:
            return -out_logits.softmax(-1)[:, tgt_ids]
        prob = out_logits[:, :-1].sigmoid()[:, tgt_ids]
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg_cost = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
        pos_cost = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
        return pos_cost - neg_cost

    @torch.no_grad()
    def cost_matrix(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
        """Outputs ``pred_logits`` [B, Q, K+1], ``pred_boxes`` [B, Q, 4] → cost [B, Q, sum(M_i)] on the CPU."""
        bs, num_queries = outputs["pred_logits"].shape[:2]
        out_logits = outputs["pred_logits"].flatten(0, 1)
        out_bbox = outputs["pred_boxes"].flatten(0, 1)
        tgt_ids = torch.cat([v["labels"] for v in targets])
        tgt_bbox = torch.cat([v["boxes"] for v in targets])
        cost_class = self.class_cost(out_logits, tgt_ids)
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(box_convert(out_bbox, "cxcywh", "xyxy"),
                                         box_convert(tgt_bbox, "cxcywh", "xyxy"))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        return cost.view(bs, num_queries, -1).float().cpu()

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> Indices:
        """→ per image ``(query_indices, target_indices)``, int64 tensors of length min(Q, M_i)."""
        return hungarian_assignment(self.cost_matrix(outputs, targets), [len(v["boxes"]) for v in targets])


def hungarian_assignment(cost: Tensor, sizes: list[int]) -> Indices:
    """Hungarian assignment of each row of ``cost`` [N, Q, ΣM] (N = a multiple of the batch B = ``len(sizes)``:
    row n holds image n mod B's predictions against every target of the batch, ``sizes`` [B] targets per image).

    Returns per row ``(query_indices, target_indices)``, int64 tensors of length min(Q, M_i), on row n's own
    targets. A non-finite cost is a ``FloatingPointError`` (the model diverged or a target box is invalid).
    """
    if not torch.isfinite(cost).all():
        raise FloatingPointError(
            "matching cost has NaN/inf values: the model produced non-finite outputs "
            "(diverged training?) or a target box is invalid"
        )
    per_image = cost.split(sizes, -1)  # per image: [N, Q, M_i]
    pairs = [linear_sum_assignment(per_image[row % len(sizes)][row]) for row in range(cost.shape[0])]
    return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in pairs]


def build_matcher(
    set_cost_class: float = 1, set_cost_bbox: float = 5, set_cost_giou: float = 2, focal: bool = False,
    focal_alpha: float = 0.25,
) -> HungarianMatcher:
    """The matcher with ``main.py``'s cost weights (focal class cost with ``--cls_loss focal``)."""
    return HungarianMatcher(cost_class=set_cost_class, cost_bbox=set_cost_bbox, cost_giou=set_cost_giou,
                            focal=focal, focal_alpha=focal_alpha)
