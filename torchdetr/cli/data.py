"""``detr data``: bring your own data — ``convert`` (VOC/YOLO/LabelMe → COCO), ``check``, ``stats``, ``synth``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError

DEFAULT_VAL_FRACTION = 0.2


def add_parser(subparsers) -> None:
    from ..data.convert import FORMATS

    p = subparsers.add_parser("data", help="convert, check, summarise or synthesise a dataset",
                              description="Prepare a dataset for DETR: convert VOC/YOLO/LabelMe labels to COCO, "
                                          "check a COCO dataset, print statistics, or write a synthetic one.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    c = sub.add_parser("convert", help="convert a VOC, YOLO or LabelMe folder into a COCO dataset folder",
                       description="Convert a labelled folder into images/ + annotations/instances_{train,val}.json "
                                   "(+ conversion_report.json), then check the result.")
    c.add_argument("src", metavar="SRC", help="the source folder")
    c.add_argument("--from", dest="source_format", required=True, choices=FORMATS,
                   help="format of SRC")
    c.add_argument("--out", required=True, help="output folder (new or empty)")
    c.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help="share of images put in val when SRC does not define the split (default %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="seed of the hash split (default %(default)s)")
    c.add_argument("--classes", metavar="FILE",
                   help="class names, one a line (or a YAML 'names' list): fixes the order of category ids 1..K; "
                        "boxes of other classes are dropped")
    c.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")
    c.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    c.set_defaults(func=run_convert)

    k = sub.add_parser("check", help="find problems that would make training crash or silently wrong",
                       description="Check a COCO dataset folder (generic or COCO 2017 layout) or one annotation file. "
                                   "Exit code 1 when there are errors, 0 when there are only warnings.")
    k.add_argument("path", metavar="DIR_OR_ANN", help="dataset folder, or instances_*.json / panoptic_*.json file")
    k.add_argument("--images", metavar="DIR", help="image folder of an annotation file (default: guessed from the layout)")
    k.add_argument("--png_dir", metavar="DIR",
                   help="segment PNG folder of a panoptic annotation file (default: guessed from the layout)")
    k.add_argument("--no_images", action="store_true", help="do not open the image files nor the segment PNGs (faster)")
    k.add_argument("--max_per_kind", type=int, default=10, help="problems listed per kind (default %(default)s)")
    k.add_argument("--json", metavar="FILE", help="also write the reports as JSON")
    k.set_defaults(func=run_check)

    s = sub.add_parser("stats", help="print dataset statistics and draw a summary plot",
                       description="Images, boxes per class, boxes per image, COCO box-size ranges and image sizes.")
    s.add_argument("path", metavar="DIR_OR_ANN", help="dataset folder or instances_*.json file")
    s.add_argument("--out", metavar="PNG", help="also draw the summary plot to this PNG file")
    s.set_defaults(func=run_stats)

    y = sub.add_parser("synth", help="write a synthetic shapes dataset in the generic COCO layout",
                       description="Write synthetic shapes on a cluttered background (detection), or, with --panoptic, "
                                   "shapes (things) on background bands (stuff) with segment PNGs (COCO panoptic).")
    y.add_argument("--out", required=True, help="output folder")
    y.add_argument("--num_train", type=int, default=2000, help="training images (default %(default)s)")
    y.add_argument("--num_val", type=int, default=200, help="validation images (default %(default)s)")
    y.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    y.add_argument("--image_size", type=int, default=None, help="image side in pixels (default: the generator's)")
    y.add_argument("--panoptic", action="store_true",
                   help="write a panoptic dataset: images/, panoptic/ (segment PNGs), annotations/panoptic_{train,val}.json")
    y.set_defaults(func=run_synth)


def _annotation_files(path: Path) -> dict[str, tuple[Path, Path | None]]:
    """``{split: (annotation file, image folder)}`` for a dataset folder or a single annotation file."""
    from ..data.layout import find_splits, images_dir_for

    if path.is_file():
        return {path.stem.removeprefix("instances_"): (path, images_dir_for(path))}
    return {name: (files.ann_file, files.images_dir) for name, files in find_splits(path).items()}


def run_convert(args: argparse.Namespace) -> int:
    from ..data.check import check_coco_folder
    from ..data.convert import convert_dataset

    report = convert_dataset(args.source_format, args.src, args.out, val_fraction=args.val_fraction, seed=args.seed,
                             classes=args.classes, copy=args.copy, overwrite=args.overwrite)
    print(report.summary())
    print("\nchecking the result:")
    reports = check_coco_folder(report.out_dir)
    for check in reports.values():
        print(check.format(max_per_kind=3))
    if all(r.ok for r in reports.values()):
        print(f"\nnext: detr train --coco_path {report.out_dir} --output_dir runs/{Path(report.out_dir).name} "
              f"--pretrained detr_resnet50   (num_classes {report.num_classes} is read from the annotations)")
        return 0
    return 1


def run_check(args: argparse.Namespace) -> int:
    from ..data.check import check_coco_folder, check_panoptic_dataset
    from ..data.layout import split_name

    path = Path(args.path)
    if path.is_file():
        images = Path(args.images) if args.images else None
        png_dir = Path(args.png_dir) if args.png_dir else None
        reports = {split_name(path): check_panoptic_dataset(path, png_dir, images, check_images=not args.no_images)}
    else:
        if args.images or args.png_dir:
            raise ConfigError("--images / --png_dir apply to a single annotation file, not to a dataset folder")
        reports = check_coco_folder(path, check_images=not args.no_images)
    for report in reports.values():
        print(report.format(max_per_kind=args.max_per_kind))
    if args.json:
        Path(args.json).write_text(json.dumps({name: r.to_json() for name, r in reports.items()}, indent=1))
    failed = [name for name, r in reports.items() if not r.ok]
    print(f"\n{'FAILED: errors in ' + ', '.join(failed) if failed else 'OK: no errors'}"
          f"{'' if failed else ' (warnings do not stop training)' if any(r.warnings for r in reports.values()) else ''}")
    return 1 if failed else 0


def run_stats(args: argparse.Namespace) -> int:
    from ..data.stats import compute_stats, format_stats, plot_stats

    all_stats = [compute_stats(ann, name) for name, (ann, _) in _annotation_files(Path(args.path)).items()]
    print(format_stats(all_stats))
    if args.out:
        print(f"\nplot written to {plot_stats(all_stats, args.out)}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from ..data.synthetic import write_coco_folder
    from ..data.synthetic_panoptic import write_panoptic_folder

    for flag in ("num_train", "num_val", "image_size"):
        value = getattr(args, flag)
        if value is not None and value < (1 if flag == "image_size" else 0):
            raise ConfigError(f"--{flag} must be {'positive' if flag == 'image_size' else '>= 0'}, got {value}")
    extra = {"image_size": args.image_size} if args.image_size is not None else {}
    write = write_panoptic_folder if args.panoptic else write_coco_folder
    out = write(args.out, num_train=args.num_train, num_val=args.num_val, seed=args.seed, **extra)
    kind = "synthetic panoptic dataset" if args.panoptic else "synthetic dataset"
    print(f"{kind} written to {out} ({args.num_train} train, {args.num_val} val images)")
    print(f"next: detr data check {out}")
    return 0
