"""Build the model and its post-processors from a ``DETRConfig`` (the criterion: ``losses.build``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from torch import nn

from ..config import DETRConfig
from .anchor_detr import AnchorDETR
from .backbone import build_backbone
from .detr import DETR
from .heads import init_focal_prior
from .postprocess import PostProcess, PostProcessPanoptic, PostProcessSegm
from .segmentation import DETRsegm
from .transformer import build_transformer

log = logging.getLogger(__name__)

COCO_THING_MAX_ID = 90  # panoptic: ids 0..90 are things, above are stuff (COCO panoptic convention)
PANOPTIC_THRESHOLD = 0.85  # the original's score threshold of the panoptic post-processing


def coco_panoptic_is_thing_map(num_classes: int) -> dict[int, bool]:
    """``{id: id <= 90}`` over all class ids 0..num_classes-1."""
    return {i: i <= COCO_THING_MAX_ID for i in range(num_classes)}


def panoptic_is_thing_map(num_classes: int, isthing: Mapping[int, bool] | None = None) -> dict[int, bool]:
    """``{id: is a thing}`` over all class ids 0..num_classes-1: a dataset's ``isthing`` for its categories, the
    COCO convention (``id <= 90``) for the other ids. With COCO panoptic's categories (or none) this is the
    original's map (:func:`coco_panoptic_is_thing_map`)."""
    isthing = isthing or {}
    return {i: bool(isthing.get(i, i <= COCO_THING_MAX_ID)) for i in range(num_classes)}


def build_detector(cfg: DETRConfig) -> DETR | DETRsegm:
    """The model alone (random weights; no download ever happens here)."""
    norm = cfg.resolved_backbone_norm
    backbone = build_backbone(
        backbone=cfg.backbone,
        lr_backbone=cfg.lr_backbone,
        masks=cfg.masks,
        dilation=cfg.dilation,
        hidden_dim=cfg.hidden_dim,
        position_embedding=cfg.position_embedding,
        norm=norm,
        train_all_layers=norm != "frozen",
    )
    transformer = build_transformer(
        hidden_dim=cfg.hidden_dim,
        dropout=cfg.dropout,
        nheads=cfg.nheads,
        dim_feedforward=cfg.dim_feedforward,
        enc_layers=cfg.enc_layers,
        dec_layers=cfg.dec_layers,
        pre_norm=cfg.pre_norm,
    )
    model: DETR | DETRsegm
    if cfg.variant == "dab":
        model = AnchorDETR(backbone, transformer, num_classes=cfg.num_classes, num_queries=cfg.num_queries,
                           aux_loss=cfg.aux_loss, two_stage=cfg.two_stage)
    else:
        model = DETR(backbone, transformer, num_classes=cfg.num_classes, num_queries=cfg.num_queries,
                     aux_loss=cfg.aux_loss)
    if cfg.cls_loss == "focal":
        init_focal_prior(model.class_embed)  # sigmoid classes start at the focal prior (models.heads)
    if cfg.masks:
        model = DETRsegm(model, freeze_detr=cfg.frozen_weights is not None)
    return model


def build_postprocessors(
    cfg: DETRConfig, panoptic_threshold: float = PANOPTIC_THRESHOLD, isthing: Mapping[int, bool] | None = None
) -> dict[str, nn.Module]:
    """``{"bbox"}`` plus ``"segm"`` and ``"panoptic"`` for mask models.

    ``"panoptic"`` is built for COCO panoptic runs (as the original), for class heads larger than COCO's, and
    whenever a dataset's ``isthing`` ``{category id: bool}`` is given (:func:`panoptic_is_thing_map`).
    """
    postprocessors: dict[str, nn.Module] = {"bbox": PostProcess(focal=cfg.cls_loss == "focal")}
    if cfg.masks:
        postprocessors["segm"] = PostProcessSegm()
        if cfg.dataset_file == "coco_panoptic" or cfg.num_classes > COCO_THING_MAX_ID + 1 or isthing is not None:
            postprocessors["panoptic"] = PostProcessPanoptic(
                panoptic_is_thing_map(cfg.num_classes, isthing), threshold=panoptic_threshold
            )
    return postprocessors
