"""The DETR model: backbone, position encodings, transformer, heads, variants and post-processors."""

from .backbone import Backbone, Joiner, build_backbone
from .build import build_detector, build_postprocessors
from .detr import DETR, MLP, Decoded, DecoderQueries, Encoded
from .postprocess import PostProcess, PostProcessPanoptic, PostProcessSegm
from .segmentation import DETRsegm
from .transformer import Transformer

__all__ = [
    "DETR", "MLP", "Backbone", "DETRsegm", "Decoded", "DecoderQueries", "Encoded", "Joiner", "PostProcess",
    "PostProcessPanoptic", "PostProcessSegm", "Transformer", "build_backbone", "build_detector", "build_postprocessors",
]
