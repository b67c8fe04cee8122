"""``detr data``: bring your own data — ``convert`` (VOC/YOLO/LabelMe → COCO), ``check``, ``stats``, ``preview``
(augmentation), ``synth``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic_write import write_atomic
from ..errors import ConfigError
from ..output_paths import refuse_earlier_work, refuse_inputs, refuse_non_empty_folder

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
    k.add_argument("--full", action="store_true",
                   help="decode every image with the training loader (slower; finds truncated files and pixel values "
                        "it refuses, such as NaN) instead of reading headers only")
    k.add_argument("--max_per_kind", type=int, default=10, help="problems listed per kind (default %(default)s)")
    k.add_argument("--json", metavar="FILE", help="also write the reports as JSON")
    k.set_defaults(func=run_check)

    s = sub.add_parser("stats", help="print dataset statistics and draw a summary plot",
                       description="Images, boxes per class, boxes per image, COCO box-size ranges and image sizes.")
    s.add_argument("path", metavar="DIR_OR_ANN", help="dataset folder or instances_*.json file")
    s.add_argument("--out", metavar="PNG", help="also draw the summary plot to this PNG file")
    s.set_defaults(func=run_stats)

    v = sub.add_parser("preview", help="draw augmented training images with their boxes (what the model sees)",
                       description="Render a grid: for a few images of a COCO dataset, the original and several draws "
                                   "of the training augmentation (--augment FILE.yaml or a preset), with the "
                                   "ground-truth boxes after augmentation. Never writes into the dataset.")
    v.add_argument("--augment", default="original",
                   help="augmentation file (YAML) or preset (original, small) (default %(default)s)")
    v.add_argument("--coco_path", required=True, help="COCO-format dataset folder")
    v.add_argument("--split", default="train", help="split to draw from (default %(default)s)")
    v.add_argument("--out", required=True, help="the picture to write (.png)")
    v.add_argument("--images", type=int, default=4, help="images (rows) (default %(default)s)")
    v.add_argument("--repeats", type=int, default=5, help="augmented draws per image (default %(default)s)")
    v.add_argument("--image_size", type=int, default=800, help="as in detr train (default %(default)s)")
    v.add_argument("--max_size", type=int, default=None, help="as in detr train")
    v.add_argument("--seed", type=int, default=0, help="random seed of the draws (default %(default)s)")
    v.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    v.set_defaults(func=run_preview)

    y = sub.add_parser("synth", help="write a synthetic shapes dataset in the generic COCO layout",
                       description="Write synthetic shapes on a cluttered background (detection), or, with --panoptic, "
                                   "shapes (things) on background bands (stuff) with segment PNGs (COCO panoptic).")
    y.add_argument("--out", required=True, help="output folder")
    y.add_argument("--num_train", type=int, default=2000, help="training images (default %(default)s)")
    y.add_argument("--num_val", type=int, default=200, help="validation images (default %(default)s)")
    y.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    y.add_argument("--image_size", type=int, default=None, help="image side in pixels (default: the generator's)")
    y.add_argument("--overwrite", action="store_true", help="allow a non-empty --out (files of the same names are replaced)")
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

    if args.full and args.no_images:
        raise ConfigError("--full decodes the images, --no_images opens none: choose one")
    images_mode = "decode" if args.full else not args.no_images
    path = Path(args.path)
    if path.is_file():
        images = Path(args.images) if args.images else None
        png_dir = Path(args.png_dir) if args.png_dir else None
        reports = {split_name(path): check_panoptic_dataset(path, png_dir, images, check_images=images_mode)}
    else:
        if args.images or args.png_dir:
            raise ConfigError("--images / --png_dir apply to a single annotation file, not to a dataset folder")
        reports = check_coco_folder(path, check_images=images_mode)
    if args.json:
        inputs = [p for r in reports.values() for p in (r.ann_file, r.images_dir, r.info.get("png_dir"))]
        refuse_inputs(args.json, inputs, what=f"--json {args.json}")
    for report in reports.values():
        print(report.format(max_per_kind=args.max_per_kind))
    if args.json:
        content = json.dumps({name: r.to_json() for name, r in reports.items()}, indent=1)
        write_atomic(args.json, lambda f: f.write(content.encode()), what="report")
    failed = [name for name, r in reports.items() if not r.ok]
    print(f"\n{'FAILED: errors in ' + ', '.join(failed) if failed else 'OK: no errors'}"
          f"{'' if failed else ' (warnings do not stop training)' if any(r.warnings for r in reports.values()) else ''}")
    return 1 if failed else 0


def run_stats(args: argparse.Namespace) -> int:
    from ..data.stats import compute_stats, format_stats, plot_stats

    files = _annotation_files(Path(args.path))
    if args.out:
        refuse_inputs(args.out, [ann for ann, _ in files.values()], what=f"--out {args.out}")
    all_stats = [compute_stats(ann, name) for name, (ann, _) in files.items()]
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
    refuse_non_empty_folder(args.out, what=f"--out {args.out}", overwrite=args.overwrite)
    extra = {"image_size": args.image_size} if args.image_size is not None else {}
    write = write_panoptic_folder if args.panoptic else write_coco_folder
    out = write(args.out, num_train=args.num_train, num_val=args.num_val, seed=args.seed, **extra)
    kind = "synthetic panoptic dataset" if args.panoptic else "synthetic dataset"
    print(f"{kind} written to {out} ({args.num_train} train, {args.num_val} val images)")
    print(f"next: detr data check {out}")
    return 0


def run_preview(args: argparse.Namespace) -> int:
    import torch

    from ..atomic_write import replace_atomic
    from ..data.augment import load_augmentation, preview_samples
    from ..data.coco import CocoDetection, category_names
    from ..data.layout import resolve_split
    from ..viz.preview import render_preview

    out = Path(args.out)
    for flag in ("images", "repeats"):
        if getattr(args, flag) < (1 if flag == "images" else 0):
            raise ConfigError(f"--{flag} must be {'positive' if flag == 'images' else '>= 0'}, got {getattr(args, flag)}")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the preview is a .png file")
    files = resolve_split(args.coco_path, args.split)
    dataset = CocoDetection(files.images_dir, files.ann_file)
    refuse_inputs(out, [files.ann_file, files.images_dir, args.augment], what=f"--out {out}")
    refuse_earlier_work([out], what=f"--out {out}", overwrite=args.overwrite)
    augmentation = load_augmentation(args.augment, args.image_size, args.max_size)
    torch.manual_seed(args.seed)
    rows = preview_samples(dataset, augmentation, args.images, args.repeats)
    grid = render_preview(rows, category_names(dataset.coco))
    replace_atomic(out, lambda tmp: grid.save(tmp, format="PNG"), what="preview")
    panels = sum(len(row) for row in rows)
    print(f"{out}: {panels} panels ({len(rows)} images: the original and {args.repeats} draws of {augmentation.source}); "
          f"{augmentation.dropped} of {augmentation.seen} augmented boxes left the image and were dropped")
    return 0
