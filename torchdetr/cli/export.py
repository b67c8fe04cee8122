"""``detr export``: write a model as ONNX, TorchScript or a torch.export program, checked against eager PyTorch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import UserError

FORMATS = ("onnx", "torchscript", "program")  # = torchdetr.inference.export.FORMATS (not imported: keeps --help fast)
ASPECT = 4 / 3  # the export sample is image_size × image_size·4/3 (800 → 800×1066), a typical COCO image


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or a torch.export program",
        description="Export a model for deployment with dynamic batch and image size, then compare the exported "
                    "file with the eager model on other image sizes (exit 1 if they differ by more than 1e-4). "
                    "Inputs: images [B,3,H,W] float32 (normalised, zero padded) and mask [B,H,W] bool "
                    "(True = padding); outputs: pred_logits, pred_boxes (and pred_masks for mask models).",
    )
    p.add_argument("--model", required=True, metavar="NAME_OR_CKPT",
                   help="official model name (e.g. detr_resnet50; downloads the weights) or a checkpoint file")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from the --output suffix: .onnx, .ts/.pt, .pt2)")
    p.add_argument("--output", required=True, metavar="FILE", help="file to write")
    p.add_argument("--image_size", type=int, default=800,
                   help="shorter side of the export sample; the longer side is 4/3 of it (default: 800 → 800×1066)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default and minimum: 18)")
    p.add_argument("--static", action="store_true",
                   help="fixed input shape (batch 1 × the sample size) instead of dynamic batch/height/width")
    p.add_argument("--no-check", "--no_check", dest="check", action="store_false",
                   help="skip the comparison with the eager model")
    p.set_defaults(func=run)


def _load(name_or_path: str):
    """``load_model`` with download/read failures turned into one-line user errors."""
    from ..inference.loading import load_model
    from ..models.zoo import OFFICIAL_MODELS

    try:
        return load_model(name_or_path, device="cpu")
    except (FileNotFoundError, ValueError, UserError):
        raise
    except (OSError, RuntimeError) as err:
        reason = str(getattr(err, "reason", None) or err).strip().splitlines()
        reason_text = reason[0] if reason else type(err).__name__
        if name_or_path in OFFICIAL_MODELS:
            url = OFFICIAL_MODELS[name_or_path].url
            raise UserError(
                f"--model {name_or_path}: could not download the official weights from {url} ({reason_text}); "
                "offline? download that file elsewhere and pass its path to --model"
            ) from None
        raise UserError(f"--model {name_or_path}: could not read the checkpoint ({reason_text})") from None


def run(args: argparse.Namespace) -> int:
    from ..inference import export

    fmt = args.format or export.format_from_path(args.output)
    if args.opset is not None and fmt != "onnx":
        raise UserError(f"--opset applies to --format onnx only (got --format {fmt})")
    if args.opset is not None and args.opset < export.MIN_OPSET:
        raise UserError(f"--opset must be at least {export.MIN_OPSET}, got {args.opset}")
    if args.image_size < export.MIN_SAMPLE_SIDE:
        raise UserError(f"--image_size must be at least {export.MIN_SAMPLE_SIDE}, got {args.image_size}")
    sample_size = (args.image_size, int(args.image_size * ASPECT))
    dynamic = not args.static

    loaded = _load(args.model)
    metadata = {
        "torchdetr.source": loaded.source,
        "torchdetr.config": json.dumps(loaded.config.to_dict()),
        "torchdetr.category_names": json.dumps({str(k): v for k, v in loaded.category_names.items()}),
    }
    output = Path(args.output)
    export.export_model(loaded.model, output, fmt, sample_size=sample_size, dynamic=dynamic,
                        opset=args.opset or export.DEFAULT_OPSET, check=False, metadata=metadata)
    shape = "dynamic batch/height/width" if dynamic or fmt == "torchscript" else f"fixed 1×3×{sample_size[0]}×{sample_size[1]}"
    print(f"wrote {output} ({fmt}, {output.stat().st_size / 2**20:.1f} MB, {shape}, "
          f"outputs {', '.join(export.ExportWrapper(loaded.model).output_names)})")
    if not args.check:
        return 0

    diffs = export.validate_export(loaded.model, output, fmt, sample_size=sample_size,
                                   dynamic=dynamic or fmt == "torchscript")
    print("max |exported - eager|: " + ", ".join(f"{name} {diff:.2e}" for name, diff in diffs.items()))
    worst = max(diffs[name] for name in export.BOX_OUTPUTS)
    if worst > export.TOLERANCE:
        print(f"detr export: check failed: logits/boxes differ by {worst:.2e} > {export.TOLERANCE:.0e}",
              file=sys.stderr)
        return 1
    print(f"check passed (tolerance {export.TOLERANCE:.0e} on pred_logits/pred_boxes)")
    return 0
