"""What an exported model is: formats, file suffixes, input/output names, the export sample and the parity tolerance.

Plain Python without torch, so that ``detr export --help`` (and its option checks) read these
definitions without loading torch. ``inference.export`` writes files that follow them,
``inference.runtimes`` runs such files and ``inference.verify`` checks them against the eager model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError

FORMATS = ("onnx", "torchscript", "program", "openvino", "int8")
SUFFIXES = {".onnx": "onnx", ".pt2": "program", ".ts": "torchscript", ".torchscript": "torchscript", ".pt": "torchscript",
            ".xml": "openvino"}
# int8: an ONNX file (.onnx) whose convolutions are quantised (onnxruntime.quantization, calibrated on --data images);
# it runs as any ONNX file. openvino: OpenVINO IR (.xml + .bin beside it), converted from the ONNX export.
RUNTIME_FORMATS = {"int8": "onnx"}  # the format whose runtime runs a file of this format

INPUT_NAMES = ("images", "mask")
BOX_OUTPUTS = ("pred_logits", "pred_boxes")
MASK_OUTPUT = "pred_masks"
METADATA_FILE = "torchdetr.json"  # TorchScript / program files: the metadata as one extra JSON file

DEFAULT_OPSET = 18  # the opset the exporter's ONNX function library is written in (no version conversion)
MIN_OPSET = 18  # converted down to 17, Split nodes keep an opset-18 attribute (invalid; torch 2.14, onnxscript 0.7)

SAMPLE_ASPECT = 4 / 3  # the export sample is image_size × image_size·4/3 (800 → 800×1066), a typical COCO image
DEFAULT_IMAGE_SIZE = 800  # shorter side of the default export sample: the original validation size
MIN_SAMPLE_SIDE = 64  # the check inputs are about 3/4 of the sample: keep their feature maps > 1 pixel

TOLERANCE = 1e-4  # max |exported - eager| accepted on pred_logits / pred_boxes
# INT8: 8-bit activations and weights in the backbone move logits by a few hundredths to tenths; the check
# accepts this much (on logits; boxes in [0, 1]) and reports the drift (AP drift: benchmarks/results/inference.md)
INT8_TOLERANCE = 0.5
FORMAT_TOLERANCE = {"int8": INT8_TOLERANCE}


def tolerance_for(fmt: str) -> float:
    """The parity tolerance of the export check for ``fmt`` (``TOLERANCE`` for lossless formats)."""
    return FORMAT_TOLERANCE.get(fmt, TOLERANCE)


def sample_size_for(image_size: int) -> tuple[int, int]:
    """(H, W) of the export sample for a shorter side of ``image_size``: (800, 1066) for 800."""
    return image_size, int(image_size * SAMPLE_ASPECT)


DEFAULT_SAMPLE_SIZE = sample_size_for(DEFAULT_IMAGE_SIZE)


def check_sample_size(sample_size: Sequence[int]) -> tuple[int, int]:
    """``sample_size`` as (H, W), or ``ConfigError`` when it is not two sides of at least ``MIN_SAMPLE_SIDE`` px."""
    if len(sample_size) != 2 or min(sample_size) < MIN_SAMPLE_SIDE:
        raise ConfigError(f"sample_size must be (H, W) with both sides >= {MIN_SAMPLE_SIDE} px, got {tuple(sample_size)}")
    return int(sample_size[0]), int(sample_size[1])


def format_from_path(path: str | Path) -> str:
    """``onnx`` for .onnx, ``program`` for .pt2, ``torchscript`` for .pt/.ts/.torchscript; else ``ConfigError``."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"cannot tell the export format from {str(path)!r}: use a {', '.join(SUFFIXES)} file name "
            f"or give the format ({', '.join(FORMATS)})"
        )
    return SUFFIXES[suffix]


def check_format(fmt: str) -> str:
    """``fmt`` when it is one of ``FORMATS``, else ``ConfigError``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r} ({', '.join(FORMATS)})")
    return fmt
