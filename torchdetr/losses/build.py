"""The set criterion from a ``DETRConfig``, and ``build_model``: the original ``models.build(args)`` triple.

``build_model`` lives here, not in ``models``, because this is the lowest layer that holds all three
parts (model, criterion, post-processors): models never import losses.
"""

from __future__ import annotations

from torch import nn

from ..config import DETRConfig
from ..models.build import build_detector, build_postprocessors
from ..models.detr import DETR
from ..models.segmentation import DETRsegm
from .matcher import build_matcher
from .set_criterion import SetCriterion, default_weight_dict


def build_criterion(cfg: DETRConfig) -> SetCriterion:
    """The set criterion with ``main.py``'s weighting."""
    matcher = build_matcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, focal=cfg.cls_loss == "focal",
                            focal_alpha=cfg.focal_alpha)
    weight_dict = default_weight_dict(
        cls_loss_coef=cfg.cls_loss_coef,
        bbox_loss_coef=cfg.bbox_loss_coef,
        giou_loss_coef=cfg.giou_loss_coef,
        mask_loss_coef=cfg.mask_loss_coef,
        dice_loss_coef=cfg.dice_loss_coef,
        masks=cfg.masks,
        aux_loss=cfg.aux_loss,
        dec_layers=cfg.dec_layers,
    )
    losses = ["labels", "boxes", "cardinality"] + (["masks"] if cfg.masks else [])
    return SetCriterion(cfg.num_classes, matcher=matcher, weight_dict=weight_dict,
                        eos_coef=cfg.eos_coef, losses=losses, cls_loss=cfg.cls_loss, focal_alpha=cfg.focal_alpha)


def build_model(cfg: DETRConfig | None = None) -> tuple[DETR | DETRsegm, SetCriterion, dict[str, nn.Module]]:
    """``(model, criterion, postprocessors)`` exactly as the original ``models.build(args)``."""
    cfg = cfg or DETRConfig()
    return build_detector(cfg), build_criterion(cfg), build_postprocessors(cfg)
