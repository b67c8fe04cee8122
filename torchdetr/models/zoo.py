"""The official facebookresearch/detr checkpoints: names, weight URLs and their metadata.

Every rule about a released model (architecture, classes, expected AP, validation image size)
lives here, so that loading, evaluation and the hub entry points read it instead of re-deriving it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..categories import COCO_CATEGORIES, COCO_PANOPTIC_CATEGORIES
from ..config import DETRConfig
from .weight_files import download_weights

WEIGHTS_BASE_URL = "https://dl.fbaipublicfiles.com/detr/"
# The released weights were trained and evaluated with the original recipe's validation resize
# (facts about these files, like their AP; data.transforms.validation_size is the rule for other models).
RELEASED_IMAGE_SIZE = 800  # shorter side
RELEASED_MAX_SIZE = 1333  # longer-side cap


@dataclass(frozen=True)
class OfficialModel:
    """Metadata of one released checkpoint (numbers from the original README, COCO val2017).

    ``image_size`` / ``max_size``: the input resize the weights were evaluated with (shorter side,
    longer-side cap), the counterpart of torchvision's ``weights.transforms()``.
    """

    name: str
    url: str
    backbone: str
    dilation: bool = False
    masks: bool = False
    num_classes: int = 91
    metrics: dict[str, float] = field(default_factory=dict)
    categories: dict[int, str] = field(default_factory=lambda: dict(COCO_CATEGORIES))
    image_size: int = RELEASED_IMAGE_SIZE
    max_size: int = RELEASED_MAX_SIZE

    def config(self, **overrides: Any) -> DETRConfig:
        """The architecture as a ``DETRConfig`` (hub models: aux loss off)."""
        values = dict(backbone=self.backbone, dilation=self.dilation, masks=self.masks,
                      num_classes=self.num_classes, aux_loss=False,
                      dataset_file="coco_panoptic" if self.masks else "coco")
        values.update(overrides)
        return DETRConfig(**values)

    def weights_path(self) -> Path:
        """The local copy of the weights, downloaded once into torch's hub cache (``DownloadError`` offline)."""
        return download_weights(self.url, what=self.name,
                                offline_hint=f"pass the file's path instead of the name (--model PATH/{Path(self.url).name})")


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
                      masks=True, num_classes=250, metrics={"box_ap": 38.8, "pq": 43.4},
                      categories=dict(COCO_PANOPTIC_CATEGORIES)),
        OfficialModel("detr_resnet50_dc5_panoptic", WEIGHTS_BASE_URL + "detr-r50-dc5-panoptic-da08f1b1.pth",
                      "resnet50", dilation=True, masks=True, num_classes=250, metrics={"box_ap": 40.2, "pq": 44.6},
                      categories=dict(COCO_PANOPTIC_CATEGORIES)),
        OfficialModel("detr_resnet101_panoptic", WEIGHTS_BASE_URL + "detr-r101-panoptic-40021d53.pth", "resnet101",
                      masks=True, num_classes=250, metrics={"box_ap": 40.1, "pq": 45.1},
                      categories=dict(COCO_PANOPTIC_CATEGORIES)),
    )
}

DEMO_URL = WEIGHTS_BASE_URL + "detr_demo-da2a99e9.pth"
