"""``detr visualize attention IMAGE``: the attention pictures of the original hands-on notebook, as PNG.

Writes ``<image>_decoder_attention.png`` (each detection's decoder cross-attention map beside the
image with its box) and ``<image>_encoder_attention.png`` (encoder self-attention at reference
points: ``--points x,y …`` in image pixels, or the centres of the best detections).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..output_paths import make_output_folder, refuse_earlier_work, refuse_inputs
from ..viz.figure_file import save_figure


def parse_point(text: str) -> tuple[float, float]:
    """``"x,y"`` (image pixels) → (x, y)."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a point x,y (pixels, e.g. 120,80)") from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("visualize", help="attention maps of a model on an image")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    a = kinds.add_parser("attention", help="decoder and encoder attention pictures (PNG)",
                         description="Write the two attention pictures of the original notebook: each detection's "
                                     "decoder cross-attention beside the image with its box, and the encoder "
                                     "self-attention at reference points.")
    a.add_argument("image", metavar="IMAGE", help="image file")
    a.add_argument("--model", required=True, help="official model name (detr_resnet50, …) or checkpoint file")
    a.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files")
    a.add_argument("--threshold", type=float, default=0.7, help="detections kept for the decoder picture (default 0.7)")
    a.add_argument("--points", type=parse_point, nargs="+", metavar="X,Y",
                   help="reference points for the encoder picture, in image pixels (default: detection centres)")
    a.add_argument("--direction", choices=("to", "from"), default="to",
                   help="encoder maps: attention of every cell to the point (the notebook's view) or from it")
    a.add_argument("--max_detections", type=int, default=10, help="at most this many rows in the decoder picture")
    a.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    a.add_argument("--overwrite", action="store_true", help="replace the pictures of an earlier run for this image")
    a.set_defaults(func=run_attention)


def check_outputs(args: argparse.Namespace, output: Path) -> tuple[Path, Path]:
    """The two picture paths in ``--output``, refused when one is an input or (without ``--overwrite``) exists."""
    stem = Path(args.image).stem
    paths = output / f"{stem}_decoder_attention.png", output / f"{stem}_encoder_attention.png"
    for path in paths:
        refuse_inputs(path, [args.image, args.model], what=f"--output {output} (its {path.name})")
    refuse_earlier_work(paths, what=f"--output {output}", overwrite=args.overwrite)
    return paths



def run_attention(args: argparse.Namespace) -> int:
    from ..inference.detector import Detector, to_pil_image
    from ..viz.attention_plots import decoder_attention_figure, default_reference_points, encoder_attention_figure

    if not 0 <= args.threshold < 1:
        raise ConfigError(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.max_detections < 1:
        raise ConfigError(f"--max_detections must be positive, got {args.max_detections}")
    image = to_pil_image(Path(args.image))
    for x, y in args.points or []:
        if not (0 <= x < image.width and 0 <= y < image.height):
            raise ConfigError(f"--points: ({x:g}, {y:g}) is outside {args.image} ({image.width} x {image.height} pixels)")
    output = Path(args.output)
    decoder_path, encoder_path = check_outputs(args, output)
    detector = Detector.from_pretrained(args.model, device=args.device, threshold=args.threshold)
    maps = detector.attention(image)
    make_output_folder(output, what=f"--output {output}")
    written = [save_figure(decoder_attention_figure(image, maps, args.max_detections), decoder_path)]
    if maps.encoder is not None:
        points = args.points or default_reference_points(maps)
        written.append(save_figure(encoder_attention_figure(image, maps, points, args.direction), encoder_path))
    else:
        print("the model has no encoder layers: no encoder self-attention picture")
    print(f"{len(maps.detections)} detection(s) above {args.threshold:g}; wrote {', '.join(map(str, written))}")
    return 0
