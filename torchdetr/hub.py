"""Official DETR models: names, weight URLs, metadata, and torch.hub-style entry points.

Entry points keep the original signatures (``hubconf.py`` of facebookresearch/detr):
``detr_resnet50(pretrained=False, num_classes=91, return_postprocessor=False)`` and the panoptic
``detr_resnet50_panoptic(pretrained=False, num_classes=250, threshold=0.85, return_postprocessor=False)``.
``pretrained=False`` builds random weights without touching the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .categories import COCO_CATEGORIES
from .checkpoint import load_checkpoint, load_model_state
from .config import DETRConfig
from .models.build import build_detector, coco_panoptic_is_thing_map
from .models.demo import DETRdemo
from .models.postprocess import PostProcess, PostProcessPanoptic

WEIGHTS_BASE_URL = "https://dl.fbaipublicfiles.com/detr/"


@dataclass(frozen=True)
class OfficialModel:
    """Metadata of one released checkpoint (numbers from the original README, COCO val2017)."""

    name: str
    url: str
    backbone: str
    dilation: bool = False
    masks: bool = False
    num_classes: int = 91
    metrics: dict[str, float] = field(default_factory=dict)
    categories: dict[int, str] = field(default_factory=lambda: dict(COCO_CATEGORIES))

    def config(self, **overrides: Any) -> DETRConfig:
        """The architecture as a ``DETRConfig`` (hub models: aux loss off)."""
        values = dict(backbone=self.backbone, dilation=self.dilation, masks=self.masks,
                      num_classes=self.num_classes, aux_loss=False,
                      dataset_file="coco_panoptic" if self.masks else "coco")
        values.update(overrides)
        return DETRConfig(**values)


OFFICIAL_MODELS: dict[str, OfficialModel] = {
    m.name: m
    for m in (
        OfficialModel("detr_resnet50", WEIGHTS_BASE_URL + "detr-r50-e632da11.pth", "resnet50",
                      metrics={"box_ap": 42.0}),
        OfficialModel("detr_resnet50_dc5", WEIGHTS_BASE_URL + "detr-r50-dc5-f0fb7ef5.pth", "resnet50", dilation=True,
                      metrics={"box_ap": 43.3}),
        OfficialModel("detr_resnet101", WEIGHTS_BASE_URL + "detr-r101-2c7b67e5.pth", "resnet101",
                      metrics={"box_ap": 43.5}),
        OfficialModel("detr_resnet101_dc5", WEIGHTS_BASE_URL + "detr-r101-dc5-a2e86def.pth", "resnet101",
                      dilation=True, metrics={"box_ap": 44.9}),
        OfficialModel("detr_resnet50_panoptic", WEIGHTS_BASE_URL + "detr-r50-panoptic-00ce5173.pth", "resnet50",
                      masks=True, num_classes=250, metrics={"box_ap": 38.8, "pq": 43.4}),
        OfficialModel("detr_resnet50_dc5_panoptic", WEIGHTS_BASE_URL + "detr-r50-dc5-panoptic-da08f1b1.pth",
                      "resnet50", dilation=True, masks=True, num_classes=250, metrics={"box_ap": 40.2, "pq": 44.6}),
        OfficialModel("detr_resnet101_panoptic", WEIGHTS_BASE_URL + "detr-r101-panoptic-40021d53.pth", "resnet101",
                      masks=True, num_classes=250, metrics={"box_ap": 40.1, "pq": 45.1}),
    )
}

DEMO_URL = WEIGHTS_BASE_URL + "detr_demo-da2a99e9.pth"


def _load_official(model: nn.Module, name: str) -> None:
    checkpoint = load_checkpoint(OFFICIAL_MODELS[name].url)
    load_model_state(model, checkpoint["model"], source=OFFICIAL_MODELS[name].url)


def _build(name: str, pretrained: bool, num_classes: int, return_postprocessor: bool, threshold: float = 0.85):
    """Entry-point body: the architecture of ``name``, official weights when ``pretrained``."""
    spec = OFFICIAL_MODELS[name]
    if pretrained and num_classes != spec.num_classes:
        raise ValueError(f"{name}: pretrained weights have num_classes={spec.num_classes}, got {num_classes}")
    model = build_detector(spec.config(num_classes=num_classes))
    if pretrained:
        _load_official(model, name)
    if not return_postprocessor:
        return model
    if spec.masks:
        return model, PostProcessPanoptic(coco_panoptic_is_thing_map(num_classes), threshold=threshold)
    return model, PostProcess()


def detr_resnet50(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR R50 (42.0 AP on COCO val2017)."""
    return _build("detr_resnet50", pretrained, num_classes, return_postprocessor)


def detr_resnet50_dc5(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR-DC5 R50 (43.3 AP): last stage dilated, stride 16."""
    return _build("detr_resnet50_dc5", pretrained, num_classes, return_postprocessor)


def detr_resnet101(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR R101 (43.5 AP)."""
    return _build("detr_resnet101", pretrained, num_classes, return_postprocessor)


def detr_resnet101_dc5(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR-DC5 R101 (44.9 AP)."""
    return _build("detr_resnet101_dc5", pretrained, num_classes, return_postprocessor)


def detr_resnet50_panoptic(pretrained: bool = False, num_classes: int = 250, threshold: float = 0.85,
                           return_postprocessor: bool = False):
    """DETR R50 with the panoptic mask head (43.4 PQ)."""
    return _build("detr_resnet50_panoptic", pretrained, num_classes, return_postprocessor, threshold)


def detr_resnet50_dc5_panoptic(pretrained: bool = False, num_classes: int = 250, threshold: float = 0.85,
                               return_postprocessor: bool = False):
    """DETR-DC5 R50 with the panoptic mask head (44.6 PQ)."""
    return _build("detr_resnet50_dc5_panoptic", pretrained, num_classes, return_postprocessor, threshold)


def detr_resnet101_panoptic(pretrained: bool = False, num_classes: int = 250, threshold: float = 0.85,
                            return_postprocessor: bool = False):
    """DETR R101 with the panoptic mask head (45.1 PQ)."""
    return _build("detr_resnet101_panoptic", pretrained, num_classes, return_postprocessor, threshold)


def detr_demo(pretrained: bool = False, num_classes: int = 91) -> DETRdemo:
    """The minimal demo DETR (see ``torchdetr.models.demo``); weights: ``detr_demo-da2a99e9.pth``."""
    model = DETRdemo(num_classes=num_classes)
    if pretrained:
        if num_classes != 91:
            raise ValueError(f"detr_demo: pretrained weights have num_classes=91, got {num_classes}")
        checkpoint = load_checkpoint(DEMO_URL)
        load_model_state(model, checkpoint["model"], source=DEMO_URL)
    return model


ENTRY_POINTS = {
    "detr_resnet50": detr_resnet50,
    "detr_resnet50_dc5": detr_resnet50_dc5,
    "detr_resnet101": detr_resnet101,
    "detr_resnet101_dc5": detr_resnet101_dc5,
    "detr_resnet50_panoptic": detr_resnet50_panoptic,
    "detr_resnet50_dc5_panoptic": detr_resnet50_dc5_panoptic,
    "detr_resnet101_panoptic": detr_resnet101_panoptic,
    "detr_demo": detr_demo,
}
