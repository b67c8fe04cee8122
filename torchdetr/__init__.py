"""torchdetr: DETR (DEtection TRansformer) for training, evaluation, inspection and serving.

Public names are imported lazily, so ``import torchdetr`` (and the ``detr`` command) start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__  # noqa: F401 (torchdetr.__version__)

# public name → module that defines it
_EXPORTS = {
    "DETRConfig": "torchdetr.config",
    "NestedTensor": "torchdetr.structures",
    "nested_tensor_from_tensor_list": "torchdetr.structures",
    "build_model": "torchdetr.losses.build",
    "load_checkpoint": "torchdetr.engine.checkpoint",
    "load_model": "torchdetr.inference.loading",
    "Detector": "torchdetr.inference.detector",
    "optimize": "torchdetr.inference.optimize",
    "train": "torchdetr.engine.run",
}

__all__ = [
    "DETRConfig", "Detector", "NestedTensor", "build_model", "load_checkpoint", "load_model",
    "nested_tensor_from_tensor_list", "optimize", "train",
]

if TYPE_CHECKING:  # pragma: no cover
    from .config import DETRConfig
    from .engine.checkpoint import load_checkpoint
    from .engine.run import train
    from .inference.detector import Detector
    from .inference.loading import load_model
    from .inference.optimize import optimize
    from .losses.build import build_model
    from .structures import NestedTensor, nested_tensor_from_tensor_list


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torchdetr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
