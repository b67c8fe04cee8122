"""The model a command runs: ``--model NAME_OR_CHECKPOINT`` or ``--exported FILE``, with ``--device`` and
``--precision``; one set of flags and one loader for ``detr predict``, ``track`` and ``serve``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..inference.precision import FAITHFUL, PRECISION_HELP, PRECISIONS

if TYPE_CHECKING:
    from ..inference.detector import Detector

EXPORTED_HELP = ("run this exported model (from detr export) instead of --model: ONNX or INT8 .onnx with onnxruntime, "
                 "OpenVINO .xml with OpenVINO; class names and image size come from the file")


def add_model_arguments(parser: argparse.ArgumentParser, *, exported_help: str = EXPORTED_HELP,
                        precision_note: str = "--model only.") -> None:
    """``--model``, ``--onnx``/``--exported`` (one destination, ``args.onnx``), ``--device`` and ``--precision``."""
    parser.add_argument("--model", help="official model name (detr_resnet50, …) or checkpoint file")
    parser.add_argument("--onnx", "--exported", dest="onnx", metavar="FILE", help=exported_help)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default=FAITHFUL, choices=PRECISIONS, help=f"{precision_note} {PRECISION_HELP}")


def load_detector(args: argparse.Namespace, *, threshold: float, batch_size: int,
                  image_size: int | None = None, max_size: int | None = None) -> Detector:
    """The ``Detector`` the flags of ``add_model_arguments`` name; exactly one of ``--model``/``--exported``,
    and ``--precision`` only with ``--model`` (an exported model runs as it was exported)."""
    from ..inference.detector import Detector

    if bool(args.model) == bool(args.onnx):
        raise ConfigError("give either --model NAME_OR_CHECKPOINT or --exported FILE (--onnx FILE)")
    options = dict(threshold=threshold, image_size=image_size, max_size=max_size, batch_size=batch_size)
    if args.onnx:
        if args.precision != FAITHFUL:
            raise ConfigError(f"--precision {args.precision} applies to --model; an exported model runs as exported")
        return Detector.from_exported(args.onnx, device=args.device, **options)
    return Detector.from_pretrained(args.model, device=args.device, precision=args.precision, **options)
