"""Find every problem in a COCO detection dataset that would make DETR training crash or go silently wrong.

``check_dataset(ann_file, images_dir)`` returns a :class:`CheckReport`: ``errors`` (training must not start),
``warnings`` (training works, but look), and ``info`` (counts, the implied ``num_classes``).
``detr train`` runs it at start-up and refuses data with errors; ``detr data check`` prints it.

What is checked (problem kind → severity):

* the file: ``unreadable_json``, ``not_coco`` (no ``images``/``annotations``/``categories`` lists),
  ``bad_record`` (a record without the fields and types COCO requires) → error
* ids: ``duplicate_image_id``, ``duplicate_annotation_id``, ``duplicate_category_id``, ``unknown_image``,
  ``unknown_category`` (an annotation pointing at an id that is not there) → error;
  ``sparse_category_ids`` (ids not 1..K or 0..K-1: the class head gets max id + 1 outputs) → warning;
  ``duplicate_category_name`` → warning
* file names: ``unsafe_file_name`` (absolute, or with ``..``), ``duplicate_file_name`` → error
* image files: ``missing_image``, ``unreadable_image``, ``size_mismatch`` (JSON size is neither the stored
  nor the EXIF-upright size) → error; ``exif_orientation`` (a rotation tag; torchdetr's loader uses the
  frame whose size the JSON gives, other loaders may not) → warning. Only the header is read.
* boxes: ``non_finite`` (NaN/inf), ``bad_box_size`` (width or height <= 0), ``box_outside_image``
  (no overlap with the image) → error; ``box_partly_outside`` (it gets clipped) → warning;
  ``missing_field`` (``iscrowd``: COCO evaluation crashes without it) → error; ``missing_area`` → warning
* content: ``no_images``, ``no_annotations`` (nothing to learn; COCO AP = -1), ``no_categories`` → error;
  ``unused_category`` (its AP is -1, left out of the mean), ``class_imbalance`` (most/least frequent
  class > :data:`IMBALANCE_RATIO`) → warning; images without annotations are fine and only counted.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .convert.images import UnreadableImageError, read_image_header
from .convert.layout import find_splits, images_dir_for

IMBALANCE_RATIO = 20.0
OUTSIDE_TOLERANCE = 1e-3  # px: boxes sticking out less than this are not reported
HEADER_THREADS = 8  # image headers are read in parallel (I/O bound)

# how to fix each kind of problem; shown once per kind by CheckReport.format()
HINTS: dict[str, str] = {
    "unreadable_json": "the annotation file must be readable UTF-8 JSON",
    "not_coco": "a COCO detection file is an object with 'images', 'annotations' and 'categories' lists",
    "bad_record": "give every record the fields COCO requires, with the right types",
    "duplicate_image_id": "image ids must be unique; annotations cannot tell which image they belong to",
    "duplicate_annotation_id": "annotation ids must be unique; COCO evaluation indexes them by id",
    "duplicate_category_id": "category ids must be unique",
    "unknown_image": "the annotation's image_id is not in 'images'; the box would never be trained on",
    "unknown_category": "the annotation's category_id is not in 'categories'",
    "sparse_category_ids": "harmless but wasteful; renumber the categories 1..K to shrink the class head",
    "duplicate_category_name": "two ids share a name, so predictions cannot be told apart by name",
    "unsafe_file_name": "file_name must be a relative path inside the image folder",
    "duplicate_file_name": "one picture listed twice splits its boxes between two samples; merge the records",
    "missing_image": "check the file_name values and the image folder",
    "unreadable_image": "the file is not an image PIL can open (truncated download? wrong extension?)",
    "size_mismatch": "width/height in the JSON must be the image's real size; boxes are scaled by it",
    "exif_orientation": "re-save the image upright without the EXIF tag (`detr data convert` does this)",
    "non_finite": "NaN or inf in a number; training would produce NaN losses",
    "bad_box_size": "bbox is [x, y, width, height] (not x2, y2); width and height must be > 0",
    "box_outside_image": "the box does not overlap its image; check the coordinates and the image size",
    "box_partly_outside": "the box will be clipped to the image",
    "missing_field": "COCO evaluation reads 'iscrowd' of every annotation and crashes without it (use 0)",
    "missing_area": "the box area w*h is used; COCO evaluation sorts boxes into small/medium/large by it",
    "no_images": "the file lists no images",
    "no_annotations": "no (non-crowd) boxes: nothing to learn, and COCO evaluation reports AP = -1",
    "no_categories": "the file defines no categories",
    "unused_category": "no box of this class: its AP is -1 and left out of the mean AP",
    "class_imbalance": "rare classes will be learned poorly; collect more or weigh the data",
    "split_overlap": "the same picture in train and val inflates validation AP",
}


@dataclass(frozen=True)
class Problem:
    """One problem: its ``kind`` (a key of :data:`HINTS`), a message, the file, and the ids involved."""

    kind: str
    message: str
    file: str
    image_ids: tuple[int, ...] = ()
    annotation_ids: tuple[int, ...] = ()
    category_ids: tuple[int, ...] = ()

    def __str__(self) -> str:
        where = [f"{name} {', '.join(map(str, ids[:5]))}{', ...' if len(ids) > 5 else ''}"
                 for name, ids in (("image", self.image_ids), ("annotation", self.annotation_ids),
                                   ("category", self.category_ids)) if ids]
        return self.message + (f" [{'; '.join(where)}]" if where else "")


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_unsafe(file_name: str) -> bool:
    """True for absolute paths and paths that climb out with ``..`` (POSIX or Windows spelling)."""
    posix, windows = PurePosixPath(file_name), PureWindowsPath(file_name)
    return posix.is_absolute() or windows.is_absolute() or bool(windows.drive) or ".." in windows.parts


class _Checker:
    """Collects problems while walking one annotation file."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        self.file = str(report.ann_file)
        self.invalid_image_ids: set[int] = set()  # reported already; their annotations are not checked again

    def error(self, kind: str, message: str, file: str | None = None, **ids: tuple[int, ...]) -> None:
        self.report.errors.append(Problem(kind, message, file or self.file, **ids))

    def warn(self, kind: str, message: str, file: str | None = None, **ids: tuple[int, ...]) -> None:
        self.report.warnings.append(Problem(kind, message, file or self.file, **ids))

    # --- categories -------------------------------------------------------------------------------
    def categories(self, records: list) -> dict[int, str]:
        names: dict[int, str] = {}
        for i, cat in enumerate(records):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")) or cat["id"] < 0:
                self.error("bad_record", f"categories[{i}] needs an integer 'id' >= 0: {str(cat)[:80]}")
                continue
            if cat["id"] in names:
                self.error("duplicate_category_id", f"category id {cat['id']} is defined twice", category_ids=(cat["id"],))
                continue
            names[cat["id"]] = str(cat.get("name", cat["id"]))
        by_name: dict[str, list[int]] = defaultdict(list)
        for cid, name in names.items():
            by_name[name].append(cid)
        for name, ids in by_name.items():
            if len(ids) > 1:
                self.warn("duplicate_category_name", f"category name {name!r} is used by ids {ids}", category_ids=tuple(ids))
        if not names and not self.report.errors:
            self.error("no_categories", "'categories' is empty")
        ids = sorted(names)
        consecutive = bool(ids) and ids[0] in (0, 1) and ids == list(range(ids[0], ids[0] + len(ids)))
        if ids and not consecutive:
            self.warn("sparse_category_ids",
                      f"category ids are not consecutive from 0 or 1 ({_id_ranges(ids)}): DETR's class head needs "
                      f"num_classes = max id + 1 = {ids[-1] + 1} outputs for {len(ids)} classes",
                      category_ids=tuple(ids))
        return names

    # --- images -----------------------------------------------------------------------------------
    def images(self, records: list) -> dict[int, dict]:
        images: dict[int, dict] = {}
        by_file: dict[str, list[int]] = defaultdict(list)
        for i, im in enumerate(records):
            if not isinstance(im, dict) or not _is_int(im.get("id")):
                self.error("bad_record", f"images[{i}] needs an integer 'id': {str(im)[:80]}")
                continue
            iid = im["id"]
            if iid in images:
                self.error("duplicate_image_id", f"image id {iid} is used by {images[iid].get('file_name')!r} "
                           f"and {im.get('file_name')!r}", image_ids=(iid,))
                continue
            self.invalid_image_ids.add(iid)  # until the record passes every test below
            file_name, width, height = im.get("file_name"), im.get("width"), im.get("height")
            if not isinstance(file_name, str) or not file_name:
                self.error("bad_record", f"image {iid} has no 'file_name' string", image_ids=(iid,))
                continue
            if not (_is_number(width) and _is_number(height)):
                self.error("bad_record", f"image {iid} ({file_name}) needs numeric 'width' and 'height'", image_ids=(iid,))
                continue
            if not (math.isfinite(width) and math.isfinite(height)):
                self.error("non_finite", f"image {iid} ({file_name}) has width/height {width}x{height}", image_ids=(iid,))
                continue
            if width <= 0 or height <= 0:
                self.error("bad_record", f"image {iid} ({file_name}) has size {width}x{height}", image_ids=(iid,))
                continue
            if _is_unsafe(file_name):
                self.error("unsafe_file_name", f"image {iid}: file_name {file_name!r} points outside the image folder",
                           image_ids=(iid,))
                continue
            images[iid] = im
            self.invalid_image_ids.discard(iid)
            by_file[file_name].append(iid)
        for file_name, ids in by_file.items():
            if len(ids) > 1:
                self.error("duplicate_file_name", f"{file_name!r} is listed {len(ids)} times", image_ids=tuple(ids))
        return images

    def image_files(self, images: dict[int, dict], images_dir: Path) -> None:
        def probe(im: dict) -> tuple[dict, Any]:
            path = images_dir / im["file_name"]
            if not path.is_file():
                return im, None
            try:
                return im, read_image_header(path)
            except UnreadableImageError as err:
                return im, err

        with ThreadPoolExecutor(HEADER_THREADS) as pool:
            results = list(pool.map(probe, images.values()))
        missing = [im for im, header in results if header is None]
        if missing and len(missing) == len(images) > 1:
            self.error("missing_image", f"none of the {len(images)} image files exists under {images_dir} "
                       f"(e.g. {missing[0]['file_name']!r}): is that the right image folder?",
                       image_ids=tuple(im["id"] for im in missing))
            return
        for im, header in results:
            iid, path = im["id"], images_dir / im["file_name"]
            if header is None:
                self.error("missing_image", f"image {iid}: file not found", str(path), image_ids=(iid,))
            elif isinstance(header, UnreadableImageError):
                reason = str(header).removeprefix(f"{path}: ")
                self.error("unreadable_image", f"image {iid}: {reason}", str(path), image_ids=(iid,))
            else:
                self._size(im, header, path)

    def _size(self, im: dict, header: Any, path: Path) -> None:
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

    # --- annotations ------------------------------------------------------------------------------
    def annotations(self, records: list, images: dict[int, dict], categories: dict[int, str]) -> Counter:
        per_category: Counter = Counter()
        seen: dict[int, int] = {}
        for i, ann in enumerate(records):
            if not isinstance(ann, dict) or not _is_int(ann.get("id")):
                self.error("bad_record", f"annotations[{i}] needs an integer 'id': {str(ann)[:80]}")
                continue
            aid = ann["id"]
            ids = {"annotation_ids": (aid,)}
            if aid in seen:
                self.error("duplicate_annotation_id", f"annotation id {aid} is used {seen[aid] + 1} times", **ids)
                seen[aid] += 1
                continue
            seen[aid] = 1
            image_id, category_id, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
            if image_id in self.invalid_image_ids:
                continue
            if image_id not in images:
                self.error("unknown_image", f"annotation {aid}: image_id {image_id!r} is not in 'images'", **ids)
                continue
            ids["image_ids"] = (image_id,)
            if category_id not in categories:
                self.error("unknown_category", f"annotation {aid}: category_id {category_id!r} is not in 'categories'", **ids)
                continue
            if "iscrowd" not in ann:
                self.error("missing_field", f"annotation {aid} has no 'iscrowd'", **ids)
            if "area" not in ann:
                self.warn("missing_area", f"annotation {aid} has no 'area'", **ids)
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                self.error("bad_record", f"annotation {aid}: bbox must be [x, y, width, height] numbers, got {bbox!r:.60}", **ids)
                continue
            area = ann.get("area", 0)
            if not all(math.isfinite(v) for v in bbox) or (_is_number(area) and not math.isfinite(area)):
                self.error("non_finite", f"annotation {aid}: bbox {bbox} / area {area}", **ids)
                continue
            x, y, w, h = bbox
            if w <= 0 or h <= 0:
                self.error("bad_box_size", f"annotation {aid}: bbox {bbox} has width {w:g}, height {h:g}", **ids)
                continue
            width, height = images[image_id]["width"], images[image_id]["height"]
            if x >= width or y >= height or x + w <= 0 or y + h <= 0:
                self.error("box_outside_image", f"annotation {aid}: bbox {bbox} lies outside the {width}x{height} image", **ids)
                continue
            if min(x, y) < -OUTSIDE_TOLERANCE or x + w > width + OUTSIDE_TOLERANCE or y + h > height + OUTSIDE_TOLERANCE:
                self.warn("box_partly_outside", f"annotation {aid}: bbox {bbox} extends past the {width}x{height} image", **ids)
            if not ann.get("iscrowd", 0):
                per_category[category_id] += 1
        return per_category

    def content(self, images: dict, per_category: Counter, categories: dict[int, str]) -> None:
        if not images and not any(p.kind == "bad_record" for p in self.report.errors):
            self.error("no_images", "'images' is empty")
        if images and not per_category:
            self.error("no_annotations", "no usable non-crowd boxes in the whole file")
            return
        unused = sorted(set(categories) - set(per_category))
        for cid in unused:
            self.warn("unused_category", f"category {cid} ({categories[cid]}) has no boxes", category_ids=(cid,))
        if len(per_category) > 1:
            (most, n_most), (least, n_least) = per_category.most_common()[0], per_category.most_common()[-1]
            if n_most / n_least > IMBALANCE_RATIO:
                self.warn("class_imbalance", f"{categories[most]} has {n_most} boxes, {categories[least]} only {n_least} "
                          f"(ratio {n_most / n_least:.0f} > {IMBALANCE_RATIO:g})", category_ids=(most, least))


def _id_ranges(ids: list[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` → ``"1-3, 7, 9-10"`` (first 8 runs)."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:8])
    return text + (", ..." if len(runs) > 8 else "")


def _load(ann_file: Path, checker: _Checker) -> dict | None:
    try:
        content = json.loads(Path(ann_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        checker.error("unreadable_json", "annotation file not found")
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        checker.error("unreadable_json", f"cannot read the annotation file: {err}")
        return None
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(content, dict) or not isinstance(content.get(k), list)]
    if missing:
        what = "a JSON object" if isinstance(content, dict) else f"a JSON {type(content).__name__}"
        checker.error("not_coco", f"not a COCO detection file: {what} without the list(s) {', '.join(missing)}")
        return None
    return content


def check_dataset(ann_file: Path | str, images_dir: Path | str | None = None, *, check_images: bool = True) -> CheckReport:
    """Check one COCO annotation file (and, with ``check_images``, the headers of its image files).

    Args:
        ann_file: a COCO ``instances_*.json`` file.
        images_dir: the folder ``file_name`` is relative to; guessed from the layout when None
            (``annotations/instances_val2017.json`` → ``val2017/`` or ``images/``).
        check_images: read each image's header (existence, readability, size, EXIF orientation).

    Never raises for bad data: every problem is in the returned report.
    """
    ann_file = Path(ann_file)
    if images_dir is None and check_images:
        images_dir = images_dir_for(ann_file)
    report = CheckReport(ann_file, Path(images_dir) if images_dir is not None else None)
    checker = _Checker(report)
    content = _load(ann_file, checker)
    if content is None:
        return report
    categories = checker.categories(content["categories"])
    images = checker.images(content["images"])
    if check_images:
        if report.images_dir is None or not report.images_dir.is_dir():
            checker.error("missing_image", f"image folder {report.images_dir or '(none found beside the annotations)'} "
                          "does not exist", image_ids=tuple(images))
        else:
            checker.image_files(images, report.images_dir)
    per_category = checker.annotations(content["annotations"], images, categories)
    checker.content(images, per_category, categories)
    with_boxes = {a.get("image_id") for a in content["annotations"] if isinstance(a, dict)}
    report.info = {
        "images": len(content["images"]),
        "annotations": len(content["annotations"]),
        "categories": len(content["categories"]),
        "images_without_annotations": sum(1 for iid in images if iid not in with_boxes),
        "crowd_annotations": sum(1 for a in content["annotations"] if isinstance(a, dict) and a.get("iscrowd")),
        "boxes_per_category": {categories[c]: per_category.get(c, 0) for c in sorted(categories)},
        "num_classes": max(categories) + 1 if categories else None,
        "images_checked": bool(check_images and report.images_dir is not None and report.images_dir.is_dir()),
    }
    return report


def check_coco_folder(root: Path | str, *, check_images: bool = True) -> dict[str, CheckReport]:
    """Check every split of a dataset folder (generic or COCO 2017 layout, see :mod:`.convert.layout`).

    A picture (``file_name``) that appears in an earlier split too is reported as ``split_overlap``
    (a warning) in the later split.

    Raises:
        NotADirectoryError, FileNotFoundError: ``root`` is not a dataset folder (the message shows the layouts).
    """
    reports: dict[str, CheckReport] = {}
    earlier: dict[Path, str] = {}  # image path → the first split that uses it
    for name, files in find_splits(Path(root)).items():
        report = check_dataset(files.ann_file, files.images_dir, check_images=check_images)
        paths = {files.images_dir / file_name: iid for file_name, iid in _file_names(files.ann_file).items()}
        overlap = sorted(p for p in paths if p in earlier)
        if overlap:
            report.warnings.append(Problem(
                "split_overlap", f"{len(overlap)} picture(s) also in the {earlier[overlap[0]]} split, "
                f"e.g. {overlap[0].name!r}", str(files.ann_file), image_ids=tuple(paths[p] for p in overlap)))
        for p in paths:
            earlier.setdefault(p, name)
        reports[name] = report
    return reports


def _file_names(ann_file: Path) -> dict[str, int]:
    """``{file_name: image id}`` of a COCO file; empty when it cannot be read (its report says why)."""
    try:
        content = json.loads(ann_file.read_text(encoding="utf-8"))
        return {im["file_name"]: im["id"] for im in content["images"]
                if isinstance(im, dict) and isinstance(im.get("file_name"), str)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
