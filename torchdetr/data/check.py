"""Find every problem in a COCO detection dataset that would make DETR training crash or go silently wrong.

``check_dataset(ann_file, images_dir)`` returns a :class:`CheckReport`: ``errors`` (training must not start),
``warnings`` (training works, but look), and ``info`` (counts, the implied ``num_classes``).
``detr train`` runs it at start-up and refuses data with errors; ``detr data check`` prints it.

The annotation file is checked by the one validator, :func:`.validate.validate_coco` (the problem kinds
of the file, records, ids, boxes and content are listed there, with their hints in :data:`HINTS`); this
module adds the image files (headers only, read by :mod:`.io`):

* ``missing_image``, ``unreadable_image`` (not an image, truncated header, larger than Pillow's
  decompression-bomb limit), ``size_mismatch`` (JSON size is neither the stored nor the EXIF-upright
  size) → error;
* with ``check_images="decode"`` (``detr data check --full``), every image is decoded by the training
  loader (:func:`.io.load_rgb_image`): ``unreadable_image`` (truncated or corrupt pixel data) and
  ``refused_pixels`` (NaN or out-of-range high-bit-depth values) → error;
* ``exif_orientation`` (a rotation tag; torchdetr's loader uses the frame whose size the JSON gives, other
  loaders may not) → warning;
* ``high_bit_depth`` (16-bit, 32-bit integer or float pixels, rescaled to 8 bit by the loader's rule,
  :func:`.io.describe_mode`) → warning;

and, over a dataset folder, ``split_overlap`` (the same picture in two splits) → warning.

A COCO panoptic file (:func:`check_panoptic_dataset`; :func:`check_dataset` and :func:`check_coco_folder`
recognise one) is checked by :func:`.validate.validate_coco_panoptic`, its images as above, and its segment
PNGs (read whole: the ids are the pixels): ``missing_png``, ``unreadable_png``, ``png_size_mismatch`` (not the
image's size), ``segment_not_in_json`` (a PNG id that ``segments_info`` does not list, and not 0 = void),
``empty_segment`` (a listed segment without a pixel) → error; ``area_mismatch`` (``area`` is not the pixel
count) → warning. Overlapping segments are those that share an id (``duplicate_segment_id``, from the
validator): a PNG cannot hold anything else.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..categories import num_classes_for_category_ids
from ..errors import DataError, MissingFileError
from .io import (
    ImageHeader,
    UnreadableImageError,
    describe_mode,
    load_rgb_image,
    load_segment_ids,
    read_image_header,
    segment_size_mismatch,
)
from .layout import find_panoptic_splits, find_splits, images_dir_for, panoptic_png_dir_for
from .validate import (
    AREA_MISMATCH,
    EMPTY_SEGMENT,
    HINTS,
    IMBALANCE_RATIO,
    MISSING_PNG,
    OUTSIDE_TOLERANCE,
    PNG_SIZE_MISMATCH,
    SEGMENT_NOT_IN_JSON,
    UNREADABLE_PNG,
    VOID_SEGMENT_ID,
    PanopticValidation,
    Problem,
    is_panoptic_content,
    read_coco_json,
    validate_coco,
    validate_coco_panoptic,
)

__all__ = [
    "DECODE_IMAGES", "HINTS", "IMBALANCE_RATIO", "OUTSIDE_TOLERANCE", "CheckReport", "Problem", "check_coco_folder",
    "check_dataset", "check_panoptic_dataset",
]

HEADER_THREADS = 8  # image headers are read (or images decoded: Pillow releases the GIL) in parallel
DECODE_IMAGES = "decode"  # check_images value of ``detr data check --full``
ImageCheck = bool | Literal["decode"]


@dataclass
class CheckReport:
    """The outcome of :func:`check_dataset` for one annotation file."""

    ann_file: Path
    images_dir: Path | None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not self.errors

    def summary(self) -> str:
        """One line: error/warning counts, image/box/category counts and the implied ``num_classes``."""
        def plural(n: int, word: str, words: str | None = None) -> str:
            return f"{n} {word if n == 1 else words or word + 's'}"
        counts = f"{plural(len(self.errors), 'error')}, {plural(len(self.warnings), 'warning')}"
        if "images" not in self.info:
            return f"{self.ann_file.name}: {counts}"
        info = self.info
        objects = ("segment", "segments") if info.get("panoptic") else ("box", "boxes")
        return (f"{self.ann_file.name}: {counts} - {plural(info['images'], 'image')} "
                f"({info.get('images_without_annotations', 0)} without {objects[1]}), "
                f"{plural(info['annotations'], *objects)}, "
                f"{plural(info['categories'], 'category', 'categories')}"
                + (f" -> num_classes {info['num_classes']}" if info.get("num_classes") else ""))

    def format(self, max_per_kind: int = 10) -> str:
        """The report as text: the summary line, then errors and warnings grouped by kind with a hint each.

        At most ``max_per_kind`` problems of each kind are listed; the rest are counted.
        """
        lines = [self.summary()]
        for title, problems in (("errors", self.errors), ("warnings", self.warnings)):
            if not problems:
                continue
            lines.append(f"{title}:")
            by_kind: dict[str, list[Problem]] = defaultdict(list)
            for p in problems:
                by_kind[p.kind].append(p)
            for kind, group in by_kind.items():
                lines.append(f"  {kind} ({len(group)}): {HINTS.get(kind, '')}")
                for p in group[:max_per_kind]:
                    prefix = "" if p.file == str(self.ann_file) else f"{p.file}: "
                    lines.append(f"    {prefix}{p}")
                if len(group) > max_per_kind:
                    lines.append(f"    ... and {len(group) - max_per_kind} more")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The report as a JSON-serialisable dict."""
        def rows(problems: list[Problem]) -> list[dict]:
            return [{"kind": p.kind, "message": p.message, "file": p.file, "image_ids": list(p.image_ids),
                     "annotation_ids": list(p.annotation_ids), "category_ids": list(p.category_ids)} for p in problems]
        return {"ann_file": str(self.ann_file), "images_dir": str(self.images_dir) if self.images_dir else None,
                "ok": self.ok, "errors": rows(self.errors), "warnings": rows(self.warnings), "info": self.info}


class _ImageFileChecker:
    """Checks the files of the (valid) image records against their JSON entries, reading headers only."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report

    def error(self, kind: str, message: str, file: str, **ids: tuple[int, ...]) -> None:
        self.report.errors.append(Problem(kind, message, file, **ids))

    def warn(self, kind: str, message: str, file: str, **ids: tuple[int, ...]) -> None:
        self.report.warnings.append(Problem(kind, message, file, **ids))

    def check(self, images: dict[int, dict], images_dir: Path, decode: bool = False) -> None:
        def probe(im: dict) -> tuple[dict, ImageHeader | DataError | None]:
            path = images_dir / im["file_name"]
            if not path.is_file():
                return im, None
            try:
                header = read_image_header(path)
                if decode:
                    load_rgb_image(path)  # what training does with the file: decode, turn upright, convert to RGB
                return im, header
            except DataError as err:
                return im, err

        with ThreadPoolExecutor(HEADER_THREADS) as pool:
            results = list(pool.map(probe, images.values()))
        missing = [im for im, header in results if header is None]
        if missing and len(missing) == len(images) > 1:
            self.error("missing_image", f"none of the {len(images)} image files exists under {images_dir} "
                       f"(e.g. {missing[0]['file_name']!r}): is that the right image folder?", str(self.report.ann_file),
                       image_ids=tuple(im["id"] for im in missing))
            return
        for im, header in results:
            iid, path = im["id"], images_dir / im["file_name"]
            if header is None:
                self.error("missing_image", f"image {iid}: file not found", str(path), image_ids=(iid,))
            elif isinstance(header, DataError):
                reason = str(header).removeprefix(f"{path}: ")
                kind = "unreadable_image" if isinstance(header, UnreadableImageError) else "refused_pixels"
                self.error(kind, f"image {iid}: {reason}", str(path), image_ids=(iid,))
            else:
                self.size(im, header, path)
                self.mode(im, header, path)

    def size(self, im: dict, header: ImageHeader, path: Path) -> None:
        iid, declared = im["id"], (im["width"], im["height"])
        stored, upright = header.stored_size, header.upright_size
        if declared not in (stored, upright):
            self.error("size_mismatch", f"image {iid}: the JSON says {declared[0]}x{declared[1]}, the file is "
                       f"{stored[0]}x{stored[1]}", str(path), image_ids=(iid,))
        elif header.is_oriented:
            if stored == upright:
                frame = ("its size does not tell whether the labels were drawn on the stored or the turned picture; "
                         "torchdetr trains on the upright (turned) picture")
            elif declared == upright:
                frame = "the JSON size matches the upright picture, which torchdetr trains on (loaders that ignore EXIF do not)"
            else:
                frame = "the JSON size matches the pixels as stored, which torchdetr then trains on unturned"
            self.warn("exif_orientation", f"image {iid}: EXIF orientation {header.orientation}: {frame}", str(path),
                      image_ids=(iid,))

    def mode(self, im: dict, header: ImageHeader, path: Path) -> None:
        rule = describe_mode(header.mode)
        if rule is not None:
            self.warn("high_bit_depth", f"image {im['id']}: mode {header.mode}: {rule}", str(path), image_ids=(im["id"],))


def _check(ann_file: Path, images_dir: Path | None, check_images: ImageCheck,
           png_dir: Path | None = None) -> tuple[CheckReport, dict[int, dict]]:
    """The report of one annotation file (detection or panoptic) and its valid image records ``{id: record}``."""
    report = CheckReport(ann_file, images_dir)
    content, unreadable = read_coco_json(ann_file)
    if unreadable is not None:
        report.errors.append(unreadable)
        return report, {}
    if is_panoptic_content(content):
        return _check_panoptic(report, content, png_dir, check_images)
    validation = validate_coco(content, str(ann_file))
    report.errors += validation.errors
    report.warnings += validation.warnings
    if not isinstance(content, dict) or any(p.kind == "not_coco" for p in validation.errors):
        return report, {}
    images = validation.images
    images_checked = _check_images_dir(report, images, check_images)
    report.info = _info(content, validation.categories, images, validation.boxes_per_category)
    report.info["images_checked"] = images_checked
    report.info["images_decoded"] = images_checked and check_images == DECODE_IMAGES
    return report, images


def _check_images_dir(report: CheckReport, images: dict[int, dict], check_images: ImageCheck) -> bool:
    """Check the image files (headers; every pixel with :data:`DECODE_IMAGES`); False when the folder is missing
    (reported) or ``check_images`` is false."""
    if not check_images:
        return False
    if report.images_dir is None or not report.images_dir.is_dir():
        report.errors.append(Problem(
            "missing_image", f"image folder {report.images_dir or '(none found beside the annotations)'} does not exist",
            str(report.ann_file), image_ids=tuple(images)))
        return False
    _ImageFileChecker(report).check(images, report.images_dir, decode=check_images == DECODE_IMAGES)
    return True


def _check_panoptic(report: CheckReport, content: dict, png_dir: Path | None,
                    check_images: ImageCheck) -> tuple[CheckReport, dict[int, dict]]:
    validation = validate_coco_panoptic(content, str(report.ann_file))
    report.errors += validation.errors
    report.warnings += validation.warnings
    if any(p.kind == "not_coco" for p in validation.errors):
        return report, {}
    images_checked = _check_images_dir(report, validation.images, check_images)
    pngs_checked = False
    if check_images:
        png_dir = png_dir if png_dir is not None else panoptic_png_dir_for(report.ann_file)
        if png_dir is None or not png_dir.is_dir():
            report.errors.append(Problem(MISSING_PNG, f"folder of segment PNGs {png_dir or '(none found by the layout rule)'} "
                                         "does not exist", str(report.ann_file), image_ids=tuple(validation.annotations)))
        else:
            _check_pngs(report, validation, png_dir)
            pngs_checked = True
    report.info = _info(content, validation.categories, validation.images, validation.boxes_per_category)
    with_segments = {iid for iid, ann in validation.annotations.items() if ann["segments_info"]}
    report.info.update({
        "panoptic": True, "png_dir": str(png_dir) if png_dir else None, "pngs_checked": pngs_checked,
        "images_checked": images_checked,
        "annotations": sum(len(a["segments_info"]) for a in validation.annotations.values()),
        "images_without_annotations": sum(1 for iid in validation.images if iid not in with_segments),
        "crowd_annotations": sum(s["iscrowd"] for a in validation.annotations.values() for s in a["segments_info"]),
        "things": sum(validation.isthing.values()), "stuff": len(validation.isthing) - sum(validation.isthing.values()),
        "num_classes": num_classes_for_category_ids(validation.categories),
    })
    return report, validation.images


@dataclass(frozen=True)
class _SegmentPixels:
    """What the check needs of one segment PNG: its ``size`` (width, height) and ``{segment id: pixel count}``."""

    size: tuple[int, int]
    pixels: dict[int, int]


def _count_segment_pixels(path: Path) -> _SegmentPixels | MissingFileError | DataError:
    """The pixel count of every id in the segment PNG ``path``, or why it cannot be read. The id map [H, W] is
    dropped here, in the worker thread, so that the check holds one map per thread, not one per image."""
    try:
        id_map = load_segment_ids(path)
    except (MissingFileError, DataError) as err:
        return err
    values, counts = np.unique(id_map, return_counts=True)
    return _SegmentPixels((id_map.shape[1], id_map.shape[0]), dict(zip(values.tolist(), counts.tolist())))


def _check_pngs(report: CheckReport, validation: PanopticValidation, png_dir: Path) -> None:
    """Read every annotation's PNG: existence, size, ids against ``segments_info``, areas."""
    file = str(report.ann_file)
    image_ids = sorted(validation.annotations)
    paths = [png_dir / validation.annotations[image_id]["file_name"] for image_id in image_ids]
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        results = list(zip(image_ids, pool.map(_count_segment_pixels, paths)))
    for image_id, outcome in results:
        ann, ids = validation.annotations[image_id], {"image_ids": (image_id,)}
        path = str(png_dir / ann["file_name"])
        if isinstance(outcome, MissingFileError):
            report.errors.append(Problem(MISSING_PNG, f"image {image_id}: segment PNG not found", path, **ids))
            continue
        if isinstance(outcome, DataError):
            report.errors.append(Problem(UNREADABLE_PNG, f"image {image_id}: {str(outcome).removeprefix(path + ': ')}",
                                         path, **ids))
            continue
        info = validation.images.get(image_id)
        mismatch = None if info is None else segment_size_mismatch(outcome.size, (info["width"], info["height"]))
        if mismatch:
            report.errors.append(Problem(PNG_SIZE_MISMATCH, f"image {image_id}: {mismatch}", path, **ids))
            continue
        pixels = outcome.pixels
        listed = {s["id"]: s for s in ann["segments_info"]}
        unlisted = sorted(set(pixels) - set(listed) - {VOID_SEGMENT_ID})
        if unlisted:
            report.errors.append(Problem(
                SEGMENT_NOT_IN_JSON, f"image {image_id}: {len(unlisted)} id(s) of the PNG are not in segments_info: "
                f"{', '.join(map(str, unlisted[:5]))}{', ...' if len(unlisted) > 5 else ''} "
                f"({sum(pixels[i] for i in unlisted)} pixels)", file, **ids))
        for segment_id, seg in listed.items():
            seg_ids = {"image_ids": (image_id,), "category_ids": (seg["category_id"],)}
            if segment_id not in pixels:
                report.errors.append(Problem(EMPTY_SEGMENT, f"image {image_id}: segment {segment_id} has no pixel in "
                                             f"{ann['file_name']}", file, **seg_ids))
            elif "area" in seg and seg["area"] != pixels[segment_id]:
                report.warnings.append(Problem(AREA_MISMATCH, f"image {image_id}: segment {segment_id} has 'area' "
                                               f"{seg['area']:g} but {pixels[segment_id]} pixels", file, **seg_ids))


def check_panoptic_dataset(
    ann_file: Path | str, png_dir: Path | str | None = None, images_dir: Path | str | None = None, *,
    check_images: ImageCheck = True,
) -> CheckReport:
    """Check one COCO panoptic annotation file and, with ``check_images``, its image headers and segment PNGs.

    ``png_dir`` and ``images_dir`` are guessed from the layout (:mod:`.layout`) when None. A file that is not
    panoptic is checked as a detection file. Never raises for bad data: every problem is in the report.
    """
    ann_file = Path(ann_file)
    if images_dir is None and check_images:
        images_dir = images_dir_for(ann_file)
    return _check(ann_file, Path(images_dir) if images_dir is not None else None, check_images,
                  Path(png_dir) if png_dir is not None else None)[0]


def _info(content: dict, categories: dict[int, str], images: dict[int, dict], per_category: dict[int, int]) -> dict:
    annotations = [a for a in content["annotations"] if isinstance(a, dict)]
    with_boxes = {a.get("image_id") for a in annotations if isinstance(a.get("image_id"), int)}
    return {
        "images": len(content["images"]),
        "annotations": len(content["annotations"]),
        "categories": len(content["categories"]),
        "images_without_annotations": sum(1 for iid in images if iid not in with_boxes),
        "crowd_annotations": sum(1 for a in annotations if a.get("iscrowd") in (1, True)),
        "boxes_per_category": {categories[c]: per_category.get(c, 0) for c in sorted(categories)},
        "num_classes": num_classes_for_category_ids(categories),
    }



def check_dataset(ann_file: Path | str, images_dir: Path | str | None = None, *,
                  check_images: ImageCheck = True) -> CheckReport:
    """Check one COCO annotation file (and, with ``check_images``, the headers of its image files).

    A COCO panoptic file is checked as :func:`check_panoptic_dataset` does (PNG folder from the layout).

    Args:
        ann_file: a COCO ``instances_*.json`` file.
        images_dir: the folder ``file_name`` is relative to; guessed from the layout when None
            (``annotations/instances_val2017.json`` → ``val2017/`` or ``images/``).
        check_images: read each image's header (existence, readability, size, EXIF orientation, mode);
            ``"decode"`` (:data:`DECODE_IMAGES`, ``detr data check --full``) also decodes every image with the
            training loader (:func:`.io.load_rgb_image`), finding truncated files and refused pixel values.

    Never raises for bad data: every problem is in the returned report.
    """
    ann_file = Path(ann_file)
    if images_dir is None and check_images:
        images_dir = images_dir_for(ann_file)
    return _check(ann_file, Path(images_dir) if images_dir is not None else None, check_images)[0]


def check_coco_folder(root: Path | str, *, check_images: ImageCheck = True) -> dict[str, CheckReport]:
    """Check every split of a dataset folder (generic or COCO 2017 layout, detection and panoptic, see :mod:`.layout`).

    Panoptic splits are named like detection ones (``train``), or ``panoptic_train`` when the folder has a
    detection split of that name too. A picture (``file_name``) that appears in an earlier split of another name
    is reported as ``split_overlap`` (a warning) in the later split.

    Raises:
        MissingFileError: ``root`` does not exist.
        DataError: ``root`` is not a dataset folder (the message shows the layouts).
    """
    root = Path(root)
    panoptic = find_panoptic_splits(root) if root.is_dir() else {}
    try:
        detection = find_splits(root)
    except DataError:
        if not panoptic:
            raise
        detection = {}
    splits = [(name, name, files.ann_file, files.images_dir, None) for name, files in detection.items()]
    splits += [(name if name not in detection else f"panoptic_{name}", name, files.ann_file, files.images_dir,
                files.png_dir) for name, files in panoptic.items()]
    reports: dict[str, CheckReport] = {}
    earlier: dict[Path, str] = {}  # image path → the first split (base name) that uses it
    for name, split, ann_file, images_dir, png_dir in splits:
        report, images = _check(ann_file, images_dir, check_images, png_dir)
        paths = {images_dir / im["file_name"]: iid for iid, im in images.items()}
        overlap = sorted(p for p in paths if earlier.get(p, split) != split)
        if overlap:
            report.warnings.append(Problem(
                "split_overlap", f"{len(overlap)} picture(s) also in the {earlier[overlap[0]]} split, "
                f"e.g. {overlap[0].name!r}", str(ann_file), image_ids=tuple(paths[p] for p in overlap)))
        for p in paths:
            earlier.setdefault(p, split)
        reports[name] = report
    return reports
