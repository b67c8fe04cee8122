"""``detr export``: write a model as ONNX, TorchScript or a torch.export program, checked against eager PyTorch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError, OutputError
from ..inference.export_contract import (
    DEFAULT_IMAGE_SIZE,
    FORMATS,
    MIN_OPSET,
    MIN_SAMPLE_SIDE,
    TOLERANCE,
    format_from_path,
    sample_size_for,
    tolerance_for,
)
from ..output_paths import make_output_folder, refuse_earlier_work, refuse_inputs

DEFAULT_CALIBRATION_IMAGES = 32


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX, TorchScript, a torch.export program, OpenVINO or INT8 ONNX",
        description="Export a model for deployment with dynamic batch and image size, then compare the exported "
                    f"file with the eager model on other image sizes (exit 1 if they differ by more than {TOLERANCE:.0e}; "
                    f"{tolerance_for('int8'):g} on logits for int8). "
                    "Inputs: images [B,3,H,W] float32 (normalised, zero padded) and mask [B,H,W] bool "
                    "(True = padding); outputs: pred_logits, pred_boxes (and pred_masks for mask models).",
    )
    p.add_argument("--model", required=True, metavar="NAME_OR_CKPT",
                   help="official model name (e.g. detr_resnet50; downloads the weights) or a checkpoint file")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from the --output suffix: .onnx, .ts/.pt, .pt2, .xml = openvino); "
                        "int8: an .onnx file with quantised convolutions, calibrated on --data (needs --format int8)")
    p.add_argument("--data", metavar="DIR", help="int8: dataset folder (COCO layout) whose images calibrate the "
                   "quantisation (its val split, else train)")
    p.add_argument("--calibration_images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                   help=f"int8: how many images of --data calibrate (default {DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--output", required=True, metavar="FILE", help="file to write")
    h, w = sample_size_for(DEFAULT_IMAGE_SIZE)
    p.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help=f"shorter side of the export sample; the longer side is 4/3 of it (default: {h} → {h}×{w})")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default and minimum: {MIN_OPSET})")
    p.add_argument("--static", action="store_true",
                   help="fixed input shape (batch 1 × the sample size) instead of dynamic batch/height/width")
    p.add_argument("--no-check", "--no_check", dest="check", action="store_false",
                   help="skip the comparison with the eager model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.set_defaults(func=run)


def check_output(args: argparse.Namespace) -> Path:
    """``--output``, refused when it is ``--model`` (or any input) or a folder, or holds an earlier export
    (unless ``--overwrite``); its folder is created. An OpenVINO ``.xml`` brings its ``.bin`` along."""
    output = Path(args.output)
    written = [output, output.with_suffix(".bin")] if output.suffix.lower() == ".xml" else [output]
    for path in written:
        refuse_inputs(path, [args.model, getattr(args, "data", None)], what=f"--output {output}")
    if output.is_dir():
        raise OutputError(f"--output {output} is a folder: give the file to write (e.g. {output / 'model.onnx'})")
    refuse_earlier_work(written, what=f"--output {output}", overwrite=args.overwrite)
    make_output_folder(output.parent, what=f"--output {output}: its folder {output.parent}")
    return output


def run(args: argparse.Namespace) -> int:
    fmt = args.format or format_from_path(args.output)
    if args.opset is not None and fmt != "onnx":
        raise ConfigError(f"--opset applies to --format onnx only (got --format {fmt})")
    if args.opset is not None and args.opset < MIN_OPSET:
        raise ConfigError(f"--opset must be at least {MIN_OPSET}, got {args.opset}")
    if args.image_size < MIN_SAMPLE_SIDE:
        raise ConfigError(f"--image_size must be at least {MIN_SAMPLE_SIDE}, got {args.image_size}")

    if fmt == "int8" and not args.data:
        raise ConfigError("--format int8 needs --data DIR: images that calibrate the quantisation")
    if args.data and fmt != "int8":
        raise ConfigError(f"--data calibrates --format int8 only (got --format {fmt})")
    if args.calibration_images < 1:
        raise ConfigError(f"--calibration_images must be positive, got {args.calibration_images}")

    from ..inference import export
    from ..inference.loading import load_model

    output = check_output(args)
    sample_size = sample_size_for(args.image_size)
    dynamic = not args.static
    loaded = load_model(args.model, device="cpu")
    calibration = _calibration_batches(args, loaded) if fmt == "int8" else None
    check = export.export_model(loaded.model, output, fmt, sample_size=sample_size, dynamic=dynamic,
                                opset=args.opset or export.DEFAULT_OPSET, check=args.check,
                                metadata=export.loaded_model_metadata(loaded), calibration=calibration)
    shape = "dynamic batch/height/width" if dynamic or fmt == "torchscript" else f"fixed 1×3×{sample_size[0]}×{sample_size[1]}"
    print(f"wrote {output} ({fmt}, {output.stat().st_size / 2**20:.1f} MB, {shape}, "
          f"outputs {', '.join(export.ExportWrapper(loaded.model).output_names)})")
    if check is None:
        return 0
    print(f"max |exported - eager|: {check}")
    if not check.passed:
        print(f"detr export: check failed: logits/boxes differ by {check.worst:.2e} > {check.tolerance:.0e}",
              file=sys.stderr)
        return 1
    print(f"check passed (tolerance {check.tolerance:.0e} on pred_logits/pred_boxes)")
    return 0


def _calibration_batches(args: argparse.Namespace, loaded):
    """The first ``--calibration_images`` images of ``--data``'s val split (else train), pre-processed for the model."""
    from ..errors import MissingFileError
    from ..inference.dataset_images import dataset_images, load_images, preprocessed_batches

    try:
        _, images = dataset_images(args.data, "val", args.calibration_images)
    except MissingFileError:
        _, images = dataset_images(args.data, "train", args.calibration_images)
    return preprocessed_batches(load_images(images), loaded.image_size, loaded.max_size)
