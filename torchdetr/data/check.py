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
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import DataError
from .io import ImageHeader, UnreadableImageError, describe_mode, load_rgb_image, read_image_header
from .layout import find_splits, images_dir_for
from .validate import HINTS, IMBALANCE_RATIO, OUTSIDE_TOLERANCE, Problem, read_coco_json, validate_coco

__all__ = ["DECODE_IMAGES", "HINTS", "IMBALANCE_RATIO", "OUTSIDE_TOLERANCE", "CheckReport", "Problem", "check_coco_folder",
           "check_dataset"]

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
        return (f"{self.ann_file.name}: {counts} - {plural(info['images'], 'image')} "
                f"({info.get('images_without_annotations', 0)} without boxes), {plural(info['annotations'], 'box', 'boxes')}, "
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


def _check(ann_file: Path, images_dir: Path | None, check_images: ImageCheck) -> tuple[CheckReport, dict[int, dict]]:
    """The report of one annotation file and its valid image records ``{id: record}``."""
    report = CheckReport(ann_file, images_dir)
    content, unreadable = read_coco_json(ann_file)
    if unreadable is not None:
        report.errors.append(unreadable)
        return report, {}
    validation = validate_coco(content, str(ann_file))
    report.errors += validation.errors
    report.warnings += validation.warnings
    if not isinstance(content, dict) or any(p.kind == "not_coco" for p in validation.errors):
        return report, {}
    images = validation.images
    if check_images:
        if images_dir is None or not images_dir.is_dir():
            report.errors.append(Problem(
                "missing_image", f"image folder {images_dir or '(none found beside the annotations)'} does not exist",
                str(ann_file), image_ids=tuple(images)))
        else:
            _ImageFileChecker(report).check(images, images_dir, decode=check_images == DECODE_IMAGES)
    report.info = _info(content, validation.categories, images, validation.boxes_per_category)
    report.info["images_checked"] = bool(check_images and images_dir is not None and images_dir.is_dir())
    report.info["images_decoded"] = report.info["images_checked"] and check_images == DECODE_IMAGES
    return report, images


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
        "num_classes": max(categories) + 1 if categories else None,
    }



def check_dataset(ann_file: Path | str, images_dir: Path | str | None = None, *,
                  check_images: ImageCheck = True) -> CheckReport:
    """Check one COCO annotation file (and, with ``check_images``, the headers of its image files).

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
    """Check every split of a dataset folder (generic or COCO 2017 layout, see :mod:`.layout`).

    A picture (``file_name``) that appears in an earlier split too is reported as ``split_overlap``
    (a warning) in the later split.

    Raises:
        MissingFileError: ``root`` does not exist.
        DataError: ``root`` is not a dataset folder (the message shows the layouts).
    """
    reports: dict[str, CheckReport] = {}
    earlier: dict[Path, str] = {}  # image path → the first split that uses it
    for name, files in find_splits(Path(root)).items():
        report, images = _check(files.ann_file, files.images_dir, check_images)
        paths = {files.images_dir / im["file_name"]: iid for iid, im in images.items()}
        overlap = sorted(p for p in paths if p in earlier)
        if overlap:
            report.warnings.append(Problem(
                "split_overlap", f"{len(overlap)} picture(s) also in the {earlier[overlap[0]]} split, "
                f"e.g. {overlap[0].name!r}", str(files.ann_file), image_ids=tuple(paths[p] for p in overlap)))
        for p in paths:
            earlier.setdefault(p, name)
        reports[name] = report
    return reports

