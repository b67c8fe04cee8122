"""Official DETR models: names, weight URLs, metadata, and torch.hub-style entry points.

Entry points keep the original signatures (``hubconf.py`` of facebookresearch/detr):
``detr_resnet50(pretrained=False, num_classes=91, return_postprocessor=False)`` and the panoptic
``detr_resnet50_panoptic(pretrained=False, num_classes=250, threshold=0.85, return_postprocessor=False)``.
``pretrained=False`` builds random weights without touching the network.
"""

from __future__ import annotations

from torch import nn

from .engine.checkpoint import load_checkpoint, load_model_state
from .errors import ConfigError
from .models.build import build_detector, coco_panoptic_is_thing_map
from .models.demo import DETRdemo
from .models.postprocess import PostProcess, PostProcessPanoptic
from .models.weight_files import download_weights
from .models.zoo import DEMO_URL, OFFICIAL_MODELS, WEIGHTS_BASE_URL, OfficialModel  # noqa: F401 (re-exported)


def _load_official(model: nn.Module, name: str) -> None:
    """The official weights of ``name`` into ``model`` (downloaded once; ``DownloadError`` offline)."""
    path = OFFICIAL_MODELS[name].weights_path()
    load_model_state(model, load_checkpoint(path)["model"], source=str(path))


def _build(name: str, pretrained: bool, num_classes: int, return_postprocessor: bool, threshold: float = 0.85):
    """Entry-point body: the architecture of ``name``, official weights when ``pretrained``."""
    spec = OFFICIAL_MODELS[name]
    if pretrained and num_classes != spec.num_classes:
        raise ConfigError(f"{name}: pretrained weights have num_classes={spec.num_classes}, got {num_classes}")
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
            raise ConfigError(f"detr_demo: pretrained weights have num_classes=91, got {num_classes}")
        path = download_weights(DEMO_URL, what="detr_demo")
        load_model_state(model, load_checkpoint(path)["model"], source=str(path))
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
