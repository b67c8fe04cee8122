"""torchdetr: DETR (DEtection TRansformer) for training, evaluation, inspection and serving.

Public names are imported lazily, so ``import torchdetr`` (and the ``detr`` command) start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → module that defines it
_EXPORTS = {
    "DETRConfig": "torchdetr.config",
    "NestedTensor": "torchdetr.data.batching",
    "nested_tensor_from_tensor_list": "torchdetr.data.batching",
    "build_model": "torchdetr.models.build",
    "load_checkpoint": "torchdetr.checkpoint",
    "load_model": "torchdetr.model_loading",
    "Detector": "torchdetr.predict",
    "train": "torchdetr.engine.train",
}

__all__ = [
    "DETRConfig", "Detector", "NestedTensor", "build_model", "load_checkpoint", "load_model",
    "nested_tensor_from_tensor_list", "train",
]

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import load_checkpoint
    from .config import DETRConfig
    from .data.batching import NestedTensor, nested_tensor_from_tensor_list
    from .engine.train import train
    from .model_loading import load_model
    from .models.build import build_model
    from .predict import Detector


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torchdetr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
