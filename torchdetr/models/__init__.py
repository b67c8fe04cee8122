"""DETR model, matcher, criterion and post-processors."""

from .backbone import Backbone, Joiner, build_backbone
from .build import build_criterion, build_detector, build_model, build_postprocessors
from .criterion import SetCriterion
from .detr import DETR, MLP
from .matcher import HungarianMatcher
from .postprocess import PostProcess, PostProcessPanoptic, PostProcessSegm
from .segmentation import DETRsegm
from .transformer import Transformer

__all__ = [
    "DETR", "MLP", "Backbone", "DETRsegm", "HungarianMatcher", "Joiner", "PostProcess", "PostProcessPanoptic",
    "PostProcessSegm", "SetCriterion", "Transformer", "build_backbone", "build_criterion", "build_detector",
    "build_model", "build_postprocessors",
]
