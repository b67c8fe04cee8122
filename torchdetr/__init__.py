"""torchdetr: DETR (DEtection TRansformer) for training, evaluation, inspection and serving."""

from .checkpoint import load_checkpoint
from .config import DETRConfig
from .data.batching import NestedTensor, nested_tensor_from_tensor_list
from .models.build import build_model

__version__ = "0.1.0"

__all__ = ["DETRConfig", "NestedTensor", "build_model", "load_checkpoint", "nested_tensor_from_tensor_list"]
