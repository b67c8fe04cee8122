"""torch.hub entry points: ``torch.hub.load("<owner>/torchdetr", "detr_resnet50", pretrained=True)``."""

dependencies = ["torch", "torchvision", "scipy"]

from torchdetr.hub import (  # noqa: E402,F401
    detr_demo,
    detr_resnet50,
    detr_resnet50_dc5,
    detr_resnet50_panoptic,
    detr_resnet101,
    detr_resnet101_dc5,
    detr_resnet101_panoptic,
)
