"""``detr predict``: detect objects in images → ``predictions.json`` (COCO results) + rendered pictures;
in videos, streams and cameras → ``NAME.mp4`` + ``NAME.jsonl`` per video (``cli/video_outputs.py``).
with ``--task panoptic`` (mask models), segment them → ``panoptic.json`` + ``panoptic/*.png`` (COCO panoptic
predictions) + coloured pictures with class names.

Directories are walked (recursively) for image and video files; files that cannot be read are reported and
skipped. Image ids are 1, 2, … in the listed order, or taken from a COCO annotation file
(``--annotations``) by file name, so that the JSON can be evaluated against that dataset
(``detr eval --ann GT.json --results OUTPUT/predictions.json``, or ``--results OUTPUT/panoptic.json``).

``--output`` never touches an input: a pictures folder that is, holds or lies inside an input folder (or
image) is refused, and so is an earlier prediction in ``--output`` unless ``--overwrite``
(``torchdetr.output_paths``). Every file is written atomically (``torchdetr.atomic_write``).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic_write import replace_atomic, write_atomic
from ..errors import ConfigError, DataError, MissingFileError, OutputError
from ..output_paths import make_output_folder, refuse_earlier_work, refuse_inputs
from .model_choice import add_model_arguments, load_detector
from .video_outputs import (
    add_tiling_arguments,
    add_video_arguments,
    check_every,
    run_videos,
    split_video_inputs,
    tiling_from_args,
)

if TYPE_CHECKING:
    from PIL import Image

    from ..inference.detection import Detection
    from ..inference.detector import Detector
    from ..inference.tiles import Tiling

log = logging.getLogger(__name__)

PICTURE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})  # kept for rendered pictures; others become .png
JPEG_QUALITY = 90
PREDICTIONS_FILE = "predictions.json"
PICTURES_DIR = "images"
PANOPTIC_FILE = "panoptic.json"  # COCO panoptic predictions; the PNGs in the folder of the same name (panopticapi's rule)
PANOPTIC_DIR = "panoptic"
DETECTION_THRESHOLD = 0.7  # the original notebook's


@dataclass(frozen=True)
class ImageFile:
    """An input image: its path and its name relative to the input it was found under."""

    path: Path
    name: str


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="detect objects in images and videos (predictions.json + pictures, NAME.mp4 + NAME.jsonl), "
                        "or segment images (--task panoptic)",
        description="Detect objects in images: predictions.json (COCO results format, with file_name) and one "
                    "picture per image with boxes, class names and scores. Videos, streams and cameras: NAME.mp4 "
                    "with boxes drawn and NAME.jsonl with one line per frame. With --task panoptic (mask models: "
                    "detr_resnet50_panoptic, … or a checkpoint trained with --masks): panoptic.json + panoptic/*.png "
                    "(COCO panoptic format) and pictures with coloured segments and class names. Folders are searched "
                    "recursively; unreadable files are reported and skipped.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUTS",
                   help="image files, video files, folders of them, stream URLs (rtsp://, http://…) or camera indices (0, 1…)")
    add_model_arguments(p)
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder for predictions.json (panoptic: panoptic.json, panoptic/) and images/ "
                        "(and NAME.mp4 + NAME.jsonl per video)")
    p.add_argument("--task", default="detection", choices=("detection", "panoptic"),
                   help="detection (boxes) or panoptic (every pixel to a thing or stuff segment; mask models)")
    p.add_argument("--threshold", type=float, default=None,
                   help="keep queries whose best class probability exceeds this (default 0.7 for detection, 0 keeps "
                        "all, for COCO AP; 0.85 for panoptic, the original's)")
    p.add_argument("--batch_size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--annotations", metavar="COCO_JSON",
                   help="COCO annotation file whose image ids (matched by file name) the JSON should use")
    p.add_argument("--image_size", type=int, help="shortest side the model sees (default: the model's)")
    p.add_argument("--max_size", type=int, help="longest side the model sees (default: the model's)")
    p.add_argument("--no_render", action="store_true",
                   help="write the predictions only (predictions.json, or panoptic.json + panoptic/), no pictures")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the predictions.json and pictures of an earlier prediction in --output")
    add_tiling_arguments(p)
    add_video_arguments(p)
    p.set_defaults(func=run)


def find_images(inputs: Iterable[str | Path]) -> list[ImageFile]:
    """Files as given (any suffix) and image files under folders (``torchdetr.data.io.find_image_files``); missing → error."""
    from ..data.io import find_image_files, image_suffixes

    found: list[ImageFile] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = find_image_files(path)
            if not files:
                log.warning("%s: no image files found (%s)", path, image_suffixes())
            found.extend(ImageFile(p, p.relative_to(path).as_posix()) for p in files)
        elif path.is_file():
            found.append(ImageFile(path, path.name))
        else:
            raise MissingFileError(f"input not found: {path}")
    return found


def image_ids_from_annotations(path: str | Path) -> dict[str, int]:
    """``{file_name: id}`` of a COCO annotation file, also keyed by base name when that is unambiguous."""
    path = Path(path)
    try:
        images = json.loads(path.read_text())["images"]
        by_name = {str(im["file_name"]): int(im["id"]) for im in images}
    except FileNotFoundError:
        raise MissingFileError(f"--annotations: file not found: {path}") from None
    except (ValueError, KeyError, TypeError) as err:  # ValueError covers JSON and UTF-8 decoding errors
        reason = "no 'images' list" if isinstance(err, (KeyError, TypeError)) else "not JSON"
        raise DataError(f"--annotations: {path} is not a COCO annotation file ({reason})") from None
    base_names: dict[str, list[int]] = {}
    for name, image_id in by_name.items():
        base_names.setdefault(Path(name).name, []).append(image_id)
    by_base = {name: ids[0] for name, ids in base_names.items() if len(ids) == 1}
    return by_base | by_name


def assign_image_ids(files: Sequence[ImageFile], annotations: str | Path | None) -> list[int | None]:
    """Ids 1..N in order, or the annotation file's ids (None for files it does not list)."""
    if annotations is None:
        return list(range(1, len(files) + 1))
    ids = image_ids_from_annotations(annotations)
    resolved = [ids.get(f.name, ids.get(f.path.name)) for f in files]
    missing = [f.name for f, i in zip(files, resolved) if i is None]
    if missing:
        log.warning("%d image(s) are not in %s and are left out of the predictions file: %s", len(missing),
                    annotations, ", ".join(missing[:5]) + (" …" if len(missing) > 5 else ""))
    return resolved


def picture_name(name: str, used: set[str]) -> str:
    """Output picture name for an input name: same relative path, a JPEG/PNG suffix, made unique."""
    path = Path(name)
    if path.suffix.lower() not in PICTURE_SUFFIXES:
        path = path.with_suffix(".png")
    candidate, counter = path.as_posix(), 1
    while candidate in used:
        counter += 1
        candidate = path.with_stem(f"{path.stem}_{counter}").as_posix()
    used.add(candidate)
    return candidate


def coco_results(detections: Sequence[Detection], image_id: int, file_name: str) -> list[dict]:
    """Detections of one image → COCO results entries (bbox as [x, y, width, height] pixels)."""
    import torch
    from torchvision.ops import box_convert

    boxes = torch.tensor([d.box for d in detections], dtype=torch.float64).reshape(-1, 4)
    xywh = box_convert(boxes, "xyxy", "xywh").tolist()
    return [
        {
            "image_id": image_id,
            "file_name": file_name,
            "category_id": d.label,
            "bbox": [round(v, 2) for v in box],
            "score": round(d.score, 5),
        }
        for d, box in zip(detections, xywh)
    ]


def _detector(args: argparse.Namespace) -> Detector:
    threshold = args.threshold if args.task == "detection" else DETECTION_THRESHOLD
    return load_detector(args, threshold=threshold, batch_size=args.batch_size, image_size=args.image_size,
                         max_size=args.max_size)


def check_outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """``(--output, its pictures folder)``; refuses an output that is or holds an input, and an earlier
    prediction there (unless ``--overwrite``). Runs before anything is loaded or written."""
    output = Path(args.output)
    what = f"--output {output}"
    inputs = [*args.inputs, args.model, args.onnx, args.annotations]
    results = PANOPTIC_FILE if args.task == "panoptic" else PREDICTIONS_FILE
    refuse_inputs(output / results, inputs, what=f"{what} (its {results})")
    pictures = output / PICTURES_DIR
    folders = [pictures] if not args.no_render else []
    if args.task == "panoptic":
        folders.append(output / PANOPTIC_DIR)
    for folder in folders:
        refuse_inputs(folder, inputs, what=f"{what} (its folder {folder})", folder=True)
    refuse_earlier_work([output / results, *folders], what=what, overwrite=args.overwrite)
    if output.exists() and not output.is_dir():
        raise OutputError(f"{what} is a file, not a folder: choose a folder")
    return output, pictures


def save_picture(picture: Image.Image, target: Path) -> None:
    """Write a rendered picture atomically (its format from the suffix: JPEG or PNG); OS failures name ``target``."""
    fmt = "JPEG" if target.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    make_output_folder(target.parent, what=str(target.parent))
    replace_atomic(target, lambda tmp: picture.save(tmp, format=fmt, **options), what="picture")


def readable_batches(files: Sequence[ImageFile], batch_size: int,
                     skipped: list[str]) -> Iterator[tuple[list[int], list[Image.Image]]]:
    """``files`` decoded ``batch_size`` at a time (the data layer's loader: EXIF orientation, RGB), as (their indices,
    the images), with a progress bar over the files. Unreadable files are reported, named in ``skipped`` and left out."""
    from PIL import Image
    from tqdm import tqdm

    from ..inference.detector import to_pil_image

    progress = tqdm(total=len(files), unit="img", desc="predict", disable=True if len(files) < 2 else None)
    for start in range(0, len(files), batch_size):
        chunk, images = [], []
        for index in range(start, min(start + batch_size, len(files))):
            try:
                images.append(to_pil_image(files[index].path))
                chunk.append(index)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                skipped.append(files[index].name)
                progress.write(f"skipped: {err}")
        yield chunk, images
        progress.update(min(batch_size, len(files) - start))
    progress.close()


def _detect(detector: Detector, images: list, tiling: Tiling | None) -> list[list[Detection]]:
    """One batch of images → detections, tiled when ``--tile`` asks for it (else exactly ``Detector.detect``)."""
    if tiling is None:
        return detector.detect(images)
    return [detector.detect_tiled(image, tiling) for image in images]


def run(args: argparse.Namespace) -> int:

    from ..viz.draw import draw_detections

    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be positive, got {args.batch_size}")
    if args.threshold is None:
        from ..inference.panoptic import PANOPTIC_THRESHOLD

        args.threshold = DETECTION_THRESHOLD if args.task == "detection" else PANOPTIC_THRESHOLD
    if not 0 <= args.threshold < 1:
        raise ConfigError(f"--threshold must be in [0, 1), got {args.threshold}")
    tiling = tiling_from_args(args)
    check_every(args)
    sources, image_inputs = split_video_inputs(args.inputs)
    files = find_images(image_inputs)
    if not files and not sources:
        raise MissingFileError(f"no images or videos found in {', '.join(args.inputs)}")
    image_ids = assign_image_ids(files, args.annotations)
    if args.task == "panoptic" and (sources or tiling is not None):
        raise ConfigError("--task panoptic segments images: videos, streams and --tile are for --task detection")
    if files:
        output, pictures = check_outputs(args)
    detector_once = functools.cache(lambda: _detector(args))
    if sources:
        videos = run_videos(args, detector_once, sources)
        if not files:
            return 0 if videos.frames else 1
    detector = detector_once()
    if args.task == "panoptic":
        return _run_panoptic(args, files, image_ids, detector)
    make_output_folder(pictures if not args.no_render else output, what=f"--output {output}")

    results: list[dict] = []
    skipped: list[str] = []
    used_names: set[str] = set()
    num_detections = num_images = 0
    for chunk, images in readable_batches(files, args.batch_size, skipped):
        if images:
            for index, image, detections in zip(chunk, images, _detect(detector, images, tiling)):
                num_images += 1
                num_detections += len(detections)
                if image_ids[index] is not None:
                    results.extend(coco_results(detections, image_ids[index], files[index].name))
                if not args.no_render:
                    save_picture(draw_detections(image, detections), pictures / picture_name(files[index].name, used_names))

    predictions = output / PREDICTIONS_FILE
    write_atomic(predictions, lambda f: f.write(json.dumps(results).encode()), what="predictions")
    print(f"{num_images} image(s), {num_detections} detection(s) above {args.threshold:g} → {predictions}"
          + ("" if args.no_render else f"; pictures in {pictures}"))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): {', '.join(skipped[:5])}{' …' if len(skipped) > 5 else ''}")
    return 0 if num_images else 1


def _run_panoptic(args: argparse.Namespace, files: Sequence[ImageFile], image_ids: Sequence[int | None],
                  detector: Detector) -> int:
    """``--task panoptic``: COCO panoptic PNGs + JSON, and pictures with coloured, named segments."""

    from ..models.build import COCO_THING_MAX_ID
    from ..viz.panoptic import draw_panoptic

    output = Path(args.output)
    pictures, pngs = output / PICTURES_DIR, output / PANOPTIC_DIR
    make_output_folder(pngs, what=f"--output {output}")
    annotations: list[dict] = []
    skipped: list[str] = []
    used_pictures: set[str] = set()
    used_pngs: set[str] = set()
    num_segments = num_images = 0
    for chunk, images in readable_batches(files, args.batch_size, skipped):
        if images:
            for index, image, prediction in zip(chunk, images, detector.segment(images, args.threshold)):
                num_images += 1
                num_segments += len(prediction.segments)
                png_name = picture_name(Path(files[index].name).with_suffix(".png").as_posix(), used_pngs)
                save_picture(prediction.png(), pngs / png_name)
                if image_ids[index] is not None:
                    annotations.append({"image_id": image_ids[index], "file_name": png_name,
                                        "segments_info": prediction.segments_info})
                if not args.no_render:
                    names = {s.category_id: s.name for s in prediction.segments}
                    save_picture(draw_panoptic(image, prediction.id_map, prediction.segments_info, names),
                                 pictures / picture_name(files[index].name, used_pictures))

    isthing = detector.isthing or {}
    categories = [{"id": cid, "name": name, "isthing": int(isthing.get(cid, cid <= COCO_THING_MAX_ID))}
                  for cid, name in sorted(detector.category_names.items())]
    predictions = output / PANOPTIC_FILE
    content = json.dumps({"annotations": annotations, "categories": categories}).encode()
    write_atomic(predictions, lambda f: f.write(content), what="predictions")
    print(f"{num_images} image(s), {num_segments} segment(s) above {args.threshold:g} → {predictions} and {pngs}"
          + ("" if args.no_render else f"; pictures in {pictures}"))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): {', '.join(skipped[:5])}{' …' if len(skipped) > 5 else ''}")
    return 0 if num_images else 1
