"""The one validator of COCO annotation files (detection, and panoptic): every problem, with its location, never
an exception.

:func:`validate_coco` walks an annotation dict (any JSON value, in fact) and returns a :class:`Validation`:
``errors`` and ``warnings``, each a :class:`Problem` naming the file, the entry (``annotations[3] (id 7)``),
the field and the value. It never raises: whatever JSON value sits in whatever field becomes a problem.

Its users decide what stops them:

- loading (``data.coco.load_coco_api``: training and evaluation datasets) raises
  :class:`~torchdetr.errors.DataError` with the first **fatal** error — one that makes the file unusable
  (wrong types, duplicate or dangling ids, NaN/inf, boxes with negative size, missing ``iscrowd``; with
  ``read_images``, missing file names or ones outside the image folder; with ``masks``, missing or
  malformed segmentations and image sizes);
- evaluation's ground-truth check (``evaluation``) adds ``missing_area`` (COCOeval reads it);
- ``detr data check`` (:mod:`.check`) reports all of them, adding its checks of the image files.

:func:`validate_coco_panoptic` does the same for a COCO panoptic file (``segments_info`` per image; the PNGs
themselves are read by ``detr data check``, :mod:`.check`).

Other errors (boxes with no width or height, boxes outside their image, duplicate file names, a file
without images, boxes or categories, images without a valid size) make ``detr data check`` and training
refuse the data, but a loader can get past them (such boxes are dropped from the training targets).
"""

from __future__ import annotations

import json
import math
import reprlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..categories import category_names_from_coco, num_classes_for_category_ids
from ..errors import DataError, MissingFileError

IMBALANCE_RATIO = 20.0  # most / least frequent class above this: class_imbalance warning
OUTSIDE_TOLERANCE = 1e-3  # px: boxes sticking out less than this are not reported
BOX_VALUES = 4  # [x, y, width, height]
COCO_LISTS = ("images", "annotations", "categories")
CROWD_VALUES = (0, 1)

# Problem kinds (keys of HINTS) found in the annotation file itself
UNREADABLE_JSON, NOT_COCO, BAD_RECORD = "unreadable_json", "not_coco", "bad_record"
DUPLICATE_IMAGE_ID, DUPLICATE_ANNOTATION_ID, DUPLICATE_CATEGORY_ID = (
    "duplicate_image_id", "duplicate_annotation_id", "duplicate_category_id")
UNKNOWN_IMAGE, UNKNOWN_CATEGORY = "unknown_image", "unknown_category"
SPARSE_CATEGORY_IDS, DUPLICATE_CATEGORY_NAME = "sparse_category_ids", "duplicate_category_name"
UNSAFE_FILE_NAME, DUPLICATE_FILE_NAME = "unsafe_file_name", "duplicate_file_name"
NON_FINITE, BAD_BOX_SIZE, BOX_OUTSIDE_IMAGE, BOX_PARTLY_OUTSIDE = (
    "non_finite", "bad_box_size", "box_outside_image", "box_partly_outside")
MISSING_FIELD, MISSING_AREA, BAD_SEGMENTATION = "missing_field", "missing_area", "bad_segmentation"
NO_IMAGES, NO_ANNOTATIONS, NO_CATEGORIES = "no_images", "no_annotations", "no_categories"
UNUSED_CATEGORY, CLASS_IMBALANCE = "unused_category", "class_imbalance"
# ... of a panoptic file (and, found by the check, of its PNGs)
DUPLICATE_PANOPTIC_ANNOTATION, NO_PANOPTIC_ANNOTATION = "duplicate_panoptic_annotation", "no_panoptic_annotation"
BAD_SEGMENT_ID, DUPLICATE_SEGMENT_ID = "bad_segment_id", "duplicate_segment_id"
MISSING_PNG, UNREADABLE_PNG, PNG_SIZE_MISMATCH = "missing_png", "unreadable_png", "png_size_mismatch"
SEGMENT_NOT_IN_JSON, EMPTY_SEGMENT, AREA_MISMATCH = "segment_not_in_json", "empty_segment", "area_mismatch"
VOID_SEGMENT_ID = 0  # pixels of id 0 are unlabelled ("void") in COCO panoptic PNGs

# how to fix each kind of problem (those of the image files and folders too); shown once per kind by the check
HINTS: dict[str, str] = {
    UNREADABLE_JSON: "the annotation file must be readable UTF-8 JSON",
    NOT_COCO: "a COCO detection file is an object with 'images', 'annotations' and 'categories' lists",
    BAD_RECORD: "give every record the fields COCO requires, with the right types",
    DUPLICATE_IMAGE_ID: "image ids must be unique; annotations cannot tell which image they belong to",
    DUPLICATE_ANNOTATION_ID: "annotation ids must be unique; COCO evaluation indexes them by id",
    DUPLICATE_CATEGORY_ID: "category ids must be unique",
    UNKNOWN_IMAGE: "the annotation's image_id is not in 'images'; the box would never be trained on",
    UNKNOWN_CATEGORY: "the annotation's category_id is not in 'categories'",
    SPARSE_CATEGORY_IDS: "harmless but wasteful; renumber the categories 1..K to shrink the class head",
    DUPLICATE_CATEGORY_NAME: "two ids share a name, so predictions cannot be told apart by name",
    UNSAFE_FILE_NAME: "file_name must be a relative path inside the image folder",
    DUPLICATE_FILE_NAME: "one picture listed twice splits its boxes between two samples; merge the records",
    "missing_image": "check the file_name values and the image folder",
    "unreadable_image": "the file is not an image Pillow can open (truncated download? wrong extension? too large?)",
    "size_mismatch": "width/height in the JSON must be the image's real size; boxes are scaled by it",
    "exif_orientation": "re-save the image upright without the EXIF tag (`detr data convert` does this)",
    "high_bit_depth": "check that the 8-bit rescale keeps what matters, or convert the images to 8 bit yourself",
    "refused_pixels": "the training loader refuses these pixel values (NaN, infinite, out of range); fix the image",
    NON_FINITE: "NaN or inf in a number; training would produce NaN losses",
    BAD_BOX_SIZE: "bbox is [x, y, width, height] (not x2, y2); width and height must be > 0",
    BOX_OUTSIDE_IMAGE: "the box does not overlap its image; check the coordinates and the image size",
    BOX_PARTLY_OUTSIDE: "the box will be clipped to the image",
    MISSING_FIELD: "COCO evaluation reads 'iscrowd' of every annotation and crashes without it (use 0); "
                   "masks need a 'segmentation'",
    MISSING_AREA: "the box area w*h is used; COCO evaluation sorts boxes into small/medium/large by it",
    BAD_SEGMENTATION: "a segmentation is a list of polygons [x1, y1, x2, y2, ...] or an RLE {'size': [h, w], 'counts'}",
    NO_IMAGES: "the file lists no images",
    NO_ANNOTATIONS: "no (non-crowd) boxes: nothing to learn, and COCO evaluation reports AP = -1",
    NO_CATEGORIES: "the file defines no categories",
    UNUSED_CATEGORY: "no box of this class: its AP is -1 and left out of the mean AP",
    CLASS_IMBALANCE: "rare classes will be learned poorly; collect more or weigh the data",
    "split_overlap": "the same picture in train and val inflates validation AP",
    DUPLICATE_PANOPTIC_ANNOTATION: "one panoptic annotation (PNG + segments_info) per image",
    NO_PANOPTIC_ANNOTATION: "the image has no entry in 'annotations': it is neither trained on nor evaluated",
    BAD_SEGMENT_ID: "a segment id is the positive integer R + 256*G + 256^2*B of its pixels' colour (0 = void)",
    DUPLICATE_SEGMENT_ID: "two segments with one id overlap completely: the PNG cannot tell their pixels apart",
    MISSING_PNG: "each annotation's file_name must name a PNG in the panoptic folder",
    UNREADABLE_PNG: "the segment PNG must be an RGB (or RGBA) PNG Pillow can open",
    PNG_SIZE_MISMATCH: "the segment PNG must have the size of its image",
    SEGMENT_NOT_IN_JSON: "pixels whose colour is not a segment id of segments_info (nor 0, void) have no class",
    EMPTY_SEGMENT: "the segment has no pixel in the PNG: it cannot be trained on and is dropped",
    AREA_MISMATCH: "'area' should be the segment's pixel count; torchdetr counts the pixels itself",
}

_short_repr = reprlib.Repr()  # attributes set one by one: Python 3.11's Repr takes no arguments
_short_repr.maxlevel, _short_repr.maxlist, _short_repr.maxdict = 2, 6, 6
_short_repr.maxstring, _short_repr.maxother, _short_repr.maxlong = 60, 60, 40


def short(value: Any) -> str:
    """A bounded ``repr`` of any JSON value (deep or long values are abbreviated with ``...``)."""
    return _short_repr.repr(value)


@dataclass(frozen=True)
class Problem:
    """One problem: its ``kind`` (a key of :data:`HINTS`), a message naming the entry, field and value, the file,
    and the ids involved. ``fatal``: the file cannot be loaded at all (only errors are fatal)."""

    kind: str
    message: str
    file: str
    image_ids: tuple[int, ...] = ()
    annotation_ids: tuple[int, ...] = ()
    category_ids: tuple[int, ...] = ()
    fatal: bool = False

    def __str__(self) -> str:
        where = [f"{name} {', '.join(map(str, ids[:5]))}{', ...' if len(ids) > 5 else ''}"
                 for name, ids in (("image", self.image_ids), ("annotation", self.annotation_ids),
                                   ("category", self.category_ids)) if ids]
        return self.message + (f" [{'; '.join(where)}]" if where else "")

    def one_line(self) -> str:
        """``FILE: MESSAGE`` — what loading raises."""
        return f"{self.file}: {self.message}"


@dataclass
class Validation:
    """What :func:`validate_coco` found in one annotation file.

    Besides the problems: ``categories`` ``{id: name}`` and ``images`` ``{id: record}`` of the valid records,
    and ``boxes_per_category`` (valid non-crowd boxes of valid images), which ``detr data check`` reports.
    """

    file: str
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    categories: dict[int, str] = field(default_factory=dict)
    images: dict[int, dict] = field(default_factory=dict)
    boxes_per_category: Counter = field(default_factory=Counter)

    def first(self, stops: Callable[[Problem], bool] = lambda p: p.fatal) -> Problem | None:
        """The first problem for which ``stops`` is true, errors before warnings, each in file order.

        By default the first fatal error; a user may also stop at some warnings (evaluation: ``missing_area``).
        """
        return next((p for p in (*self.errors, *self.warnings) if stops(p)), None)

    def raise_first(self, stops: Callable[[Problem], bool] = lambda p: p.fatal) -> None:
        """Raise :class:`~torchdetr.errors.DataError` (``FILE: entry: problem``) for :meth:`first`, if any."""
        problem = self.first(stops)
        if problem is not None:
            raise DataError(problem.one_line())


# ----------------------------------------------------------------------------------------------
# Reading the file
# ----------------------------------------------------------------------------------------------
def read_coco_json(path: Path | str) -> tuple[Any, Problem | None]:
    """``(content, None)`` for a readable JSON file, else ``(None, unreadable_json problem)``; never raises."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes()), None
    except FileNotFoundError:
        reason = "annotation file not found"
    except IsADirectoryError:
        reason = "is a folder, not an annotation file"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as err:
        reason = f"not a valid JSON file ({' '.join(str(err).split()) or type(err).__name__})"
    return None, Problem(UNREADABLE_JSON, reason, str(path), fatal=True)


def load_coco_json(path: Path | str, what: str = "annotation file") -> Any:
    """The content of the JSON file ``path`` for a loader that stops at the first problem (``what`` names the file
    in the message); the content is not validated.

    Raises:
        MissingFileError: ``path`` is not a file.
        DataError: ``path`` is not readable JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}")
    content, unreadable = read_coco_json(path)
    if unreadable is not None:
        raise DataError(unreadable.one_line())
    return content


# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    """A number that converts to a finite float (JSON integers can be too large for one)."""
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:
        return False


def _numbers_state(values: list) -> str:
    """``"finite"``, ``"non_finite"`` (numbers, some NaN/inf/too large) or ``"not_numbers"`` for a list of values."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "not_numbers"
    try:
        return "finite" if all(map(math.isfinite, values)) else "non_finite"
    except OverflowError:
        return "non_finite"


def is_unsafe_file_name(file_name: str) -> bool:
    """True for absolute paths and paths that climb out with ``..`` (POSIX or Windows spelling)."""
    posix, windows = PurePosixPath(file_name), PureWindowsPath(file_name)
    return posix.is_absolute() or windows.is_absolute() or bool(windows.drive) or ".." in windows.parts


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


def _shown(box: tuple[float, float, float, float]) -> str:
    return "'bbox' [" + ", ".join(f"{v:g}" for v in box) + "]"


def _polygon_problem(polygon: Any) -> str | None:
    if not isinstance(polygon, list) or len(polygon) % 2 or not all(_is_finite(v) for v in polygon):
        return f"a polygon must be a list of finite x, y numbers, got {short(polygon)}"
    return None


def _segmentation_problem(segmentation: Any, size: tuple[int, int] | None) -> str | None:
    """What is wrong with a COCO ``segmentation`` on an image of ``size`` = (height, width), or None.

    Polygons: a list of ``[x1, y1, x2, y2, ...]`` lists (fewer than three points are ignored by the loader);
    RLE: ``{"size": [height, width], "counts": str | [int, ...]}`` of the image's size.
    """
    if isinstance(segmentation, list):
        return next((p for p in map(_polygon_problem, segmentation) if p), None)
    if not isinstance(segmentation, dict):
        return f"'segmentation' must be polygons or an RLE, got {short(segmentation)}"
    rle_size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(rle_size, list) and len(rle_size) == 2 and all(_is_int(v) and v >= 0 for v in rle_size)):
        return f"RLE 'size' must be [height, width], got {short(rle_size)}"
    if size is not None and tuple(rle_size) != size:
        return f"RLE size {rle_size} differs from the image's [height, width] {list(size)}"
    if isinstance(counts, str) or (isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts)):
        return None
    return f"RLE 'counts' must be a string or a list of run lengths, got {short(counts)}"


# ----------------------------------------------------------------------------------------------
# The walk
# ----------------------------------------------------------------------------------------------
class _Entry:
    """``annotations[3] (id 7)``, formatted only when a problem is reported."""

    __slots__ = ("index", "record_id", "section")

    def __init__(self, section: str, index: int, record_id: int) -> None:
        self.section, self.index, self.record_id = section, index, record_id

    def __str__(self) -> str:
        return f"{self.section}[{self.index}] (id {self.record_id})"


class _Validator:
    """Collects problems while walking one annotation dict."""

    def __init__(self, file: str, masks: bool, read_images: bool) -> None:
        self.result = Validation(file)
        self.masks = masks
        self.read_images = read_images
        self.image_ids: set[int] = set()  # every integer image id, valid record or not

    def error(self, kind: str, message: str, *, fatal: bool = False, **ids: tuple[int, ...]) -> None:
        self.result.errors.append(Problem(kind, message, self.result.file, fatal=fatal, **ids))

    def warn(self, kind: str, message: str, **ids: tuple[int, ...]) -> None:
        self.result.warnings.append(Problem(kind, message, self.result.file, **ids))

    def structure(self, content: Any) -> bool:
        if not isinstance(content, dict):
            self.error(NOT_COCO, "expected a COCO annotation object (a JSON object with 'images', 'annotations' and "
                       f"'categories' lists), got a {type(content).__name__}", fatal=True)
            return False
        missing = [key for key in COCO_LISTS if key not in content]
        if missing:
            self.error(NOT_COCO, f"not a COCO annotation file: no {', '.join(map(repr, missing))} "
                       f"list{'s' if len(missing) > 1 else ''}", fatal=True)
            return False
        for key in COCO_LISTS:
            if not isinstance(content[key], list):
                self.error(NOT_COCO, f"{key!r} must be a list, got a {type(content[key]).__name__}", fatal=True)
                return False
        return True

    def record_id(self, section: str, index: int, record: Any, seen: dict[int, int]) -> int | None:
        """The record's integer id, or None after reporting why it has none or repeats one."""
        where = f"{section}[{index}]"
        if not isinstance(record, dict):
            self.error(BAD_RECORD, f"{where} must be an object, got {short(record)}", fatal=True)
            return None
        if "id" not in record:
            self.error(BAD_RECORD, f"{where} has no 'id' (keys: {short(sorted(map(str, record)))})", fatal=True)
            return None
        record_id = record["id"]
        if not _is_int(record_id) or (section == "categories" and record_id < 0):
            need = "an integer >= 0" if section == "categories" else "an integer"
            self.error(BAD_RECORD, f"{where}: 'id' must be {need}, got {short(record_id)}", fatal=True)
            return None
        if record_id in seen:
            kind = {"images": DUPLICATE_IMAGE_ID, "annotations": DUPLICATE_ANNOTATION_ID}.get(section, DUPLICATE_CATEGORY_ID)
            ids_key = {"images": "image_ids", "annotations": "annotation_ids"}.get(section, "category_ids")
            self.error(kind, f"{where}: duplicate id {record_id} (also {section}[{seen[record_id]}])", fatal=True,
                       **{ids_key: (record_id,)})
            return None
        seen[record_id] = index
        return record_id

    # --- categories -------------------------------------------------------------------------------
    def categories(self, records: list) -> None:
        seen: dict[int, int] = {}
        valid = [cat for i, cat in enumerate(records) if self.record_id("categories", i, cat, seen) is not None]
        names = self.result.categories = category_names_from_coco(valid)
        by_name: dict[str, list[int]] = defaultdict(list)
        for cid, name in names.items():
            by_name[name].append(cid)
        for name, ids in by_name.items():
            if len(ids) > 1:
                self.warn(DUPLICATE_CATEGORY_NAME, f"category name {short(name)} is used by ids {ids}", category_ids=tuple(ids))
        if not records:
            self.error(NO_CATEGORIES, "'categories' is empty")
        ids = sorted(names)
        consecutive = bool(ids) and ids[0] in (0, 1) and ids == list(range(ids[0], ids[0] + len(ids)))
        if ids and not consecutive:
            num_classes = num_classes_for_category_ids(ids)
            rule = "max id + 1" if num_classes == ids[-1] + 1 else "the original's for COCO panoptic categories"
            self.warn(SPARSE_CATEGORY_IDS,
                      f"category ids are not consecutive from 0 or 1 ({_id_ranges(ids)}): DETR's class head needs "
                      f"num_classes = {rule} = {num_classes} outputs for {len(ids)} classes",
                      category_ids=tuple(ids))

    # --- images -----------------------------------------------------------------------------------
    def images(self, records: list) -> None:
        seen: dict[int, int] = {}
        by_file: dict[str, list[int]] = defaultdict(list)
        for i, im in enumerate(records):
            iid = self.record_id("images", i, im, seen)
            if iid is None:
                continue
            self.image_ids.add(iid)
            where, ids = f"images[{i}] (id {iid})", {"image_ids": (iid,)}
            file_name = im.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                self.error(BAD_RECORD, f"{where}: 'file_name' must be a non-empty string, got {short(file_name)}",
                           fatal=self.read_images, **ids)
                continue
            if is_unsafe_file_name(file_name):
                self.error(UNSAFE_FILE_NAME, f"{where}: file_name {short(file_name)} points outside the image folder",
                           fatal=self.read_images, **ids)
                continue
            by_file[file_name].append(iid)
            if self.image_size(im, where, ids):
                self.result.images[iid] = im
        for file_name, ids in by_file.items():
            if len(ids) > 1:
                self.error(DUPLICATE_FILE_NAME, f"{short(file_name)} is listed {len(ids)} times", image_ids=tuple(ids))
        if not records:
            self.error(NO_IMAGES, "'images' is empty")

    def image_size(self, im: dict, where: str, ids: dict) -> bool:
        """Check ``width``/``height`` (positive numbers; positive integers for masks); True when usable."""
        for key in ("width", "height"):
            value = im.get(key)
            if self.masks and not (_is_int(value) and value > 0):
                self.error(BAD_RECORD, f"{where}: {key!r} must be a positive integer for masks, got {short(value)}",
                           fatal=True, **ids)
                return False
            if not _is_number(value):
                self.error(BAD_RECORD, f"{where}: {key!r} must be a positive number, got {short(value)}", **ids)
                return False
            if not _is_finite(value):
                self.error(NON_FINITE, f"{where}: {key!r} is {short(value)}", **ids)
                return False
            if value <= 0:
                self.error(BAD_RECORD, f"{where}: {key!r} must be a positive number, got {short(value)}", **ids)
                return False
        return True

    # --- annotations ------------------------------------------------------------------------------
    def annotations(self, records: list) -> None:
        seen: dict[int, int] = {}
        for i, ann in enumerate(records):
            aid = self.record_id("annotations", i, ann, seen)
            if aid is not None:
                self.annotation(ann, _Entry("annotations", i, aid), aid)

    def annotation(self, ann: dict, where: _Entry, aid: int) -> None:
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if not (_is_int(image_id) and image_id in self.image_ids):
            self.error(UNKNOWN_IMAGE, f"{where}: image_id {short(image_id)} is not in 'images'", fatal=True,
                       annotation_ids=(aid,))
            return
        ids = {"annotation_ids": (aid,), "image_ids": (image_id,)}
        if not (_is_int(category_id) and category_id in self.result.categories):
            known = sorted(self.result.categories)
            self.error(UNKNOWN_CATEGORY, f"{where}: category_id {short(category_id)} is not in 'categories' "
                       f"(ids {short(known)})", fatal=True, **ids)
            return
        box = self.box(ann, where, ids)
        if box is None or not self.crowd_and_area(ann, where, ids) or not self.segmentation(ann, where, ids):
            return
        image = self.result.images.get(image_id)
        if image is not None and self.inside_image(box, image, where, ids) and not ann["iscrowd"]:
            self.result.boxes_per_category[category_id] += 1

    def box(self, ann: dict, where: _Entry, ids: dict) -> tuple[float, float, float, float] | None:
        """``(x, y, w, h)`` of a well-formed box with positive size, else None after reporting the problem."""
        bbox = ann.get("bbox")
        state = _numbers_state(bbox) if isinstance(bbox, list) and len(bbox) == BOX_VALUES else "not_numbers"
        if state == "not_numbers":
            self.error(BAD_RECORD, f"{where}: 'bbox' must be four numbers [x, y, width, height], got {short(bbox)}",
                       fatal=True, **ids)
            return None
        if state == "non_finite":
            self.error(NON_FINITE, f"{where}: 'bbox' {short(bbox)} is not finite", fatal=True, **ids)
            return None
        x, y, w, h = map(float, bbox)
        if w < 0 or h < 0:
            self.error(BAD_BOX_SIZE, f"{where}: 'bbox' {short(bbox)} has a negative width or height "
                       "(x2, y2 written as width, height?)", fatal=True, **ids)
            return None
        if w == 0 or h == 0:
            self.error(BAD_BOX_SIZE, f"{where}: 'bbox' {short(bbox)} has width {w:g}, height {h:g}", **ids)
            return None
        return x, y, w, h

    def crowd_and_area(self, ann: dict, where: _Entry, ids: dict) -> bool:
        if "iscrowd" not in ann:
            self.error(MISSING_FIELD, f"{where} has no 'iscrowd'", fatal=True, **ids)
            return False
        if ann["iscrowd"] not in CROWD_VALUES or isinstance(ann["iscrowd"], float):
            self.error(BAD_RECORD, f"{where}: 'iscrowd' must be 0 or 1, got {short(ann['iscrowd'])}", fatal=True, **ids)
            return False
        if "area" not in ann:
            self.warn(MISSING_AREA, f"{where} has no 'area'", **ids)
            return True
        area = ann["area"]
        state = _numbers_state([area])
        if state == "non_finite":
            self.error(NON_FINITE, f"{where}: 'area' is {short(area)}", fatal=True, **ids)
            return False
        if state == "not_numbers" or area < 0:
            self.error(BAD_RECORD, f"{where}: 'area' must be a finite number >= 0, got {short(area)}", fatal=True, **ids)
            return False
        return True

    def segmentation(self, ann: dict, where: _Entry, ids: dict) -> bool:
        if not self.masks:
            return True
        if "segmentation" not in ann:
            self.error(MISSING_FIELD, f"{where} has no 'segmentation' (masks need polygons or an RLE)", fatal=True, **ids)
            return False
        image = self.result.images.get(ann["image_id"])
        size = (image["height"], image["width"]) if image is not None else None
        problem = _segmentation_problem(ann["segmentation"], size)
        if problem is not None:
            self.error(BAD_SEGMENTATION, f"{where}: {problem}", fatal=True, **ids)
            return False
        return True

    def inside_image(self, box: tuple[float, float, float, float], image: dict, where: _Entry, ids: dict) -> bool:
        (x, y, w, h), width, height = box, image["width"], image["height"]
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            self.error(BOX_OUTSIDE_IMAGE, f"{where}: {_shown(box)} lies outside the {width}x{height} image", **ids)
            return False
        if min(x, y) < -OUTSIDE_TOLERANCE or x + w > width + OUTSIDE_TOLERANCE or y + h > height + OUTSIDE_TOLERANCE:
            self.warn(BOX_PARTLY_OUTSIDE, f"{where}: {_shown(box)} extends past the {width}x{height} image", **ids)
        return True

    # --- the file as a whole ----------------------------------------------------------------------
    def content(self) -> None:
        result, per_category = self.result, self.result.boxes_per_category
        if result.images and not per_category:
            self.error(NO_ANNOTATIONS, "no usable non-crowd boxes in the whole file")
            return
        for cid in sorted(set(result.categories) - set(per_category)):
            self.warn(UNUSED_CATEGORY, f"category {cid} ({result.categories[cid]}) has no boxes", category_ids=(cid,))
        if len(per_category) > 1:
            (most, n_most), (least, n_least) = per_category.most_common()[0], per_category.most_common()[-1]
            if n_most / n_least > IMBALANCE_RATIO:
                self.warn(CLASS_IMBALANCE, f"{result.categories[most]} has {n_most} boxes, {result.categories[least]} "
                          f"only {n_least} (ratio {n_most / n_least:.0f} > {IMBALANCE_RATIO:g})", category_ids=(most, least))


def validate_coco(content: Any, file: str = "annotations", *, masks: bool = False, read_images: bool = False) -> Validation:
    """Every problem of a COCO detection annotation dict (``content``, any JSON value) read from ``file``.

    ``masks``: the annotations must also carry valid segmentations (polygons or RLE at the image size), and
    images integer sizes. ``read_images``: the pictures will be read, so a missing or unsafe ``file_name``
    is fatal (evaluation alone does not need it). Never raises; see the module docstring for which problems
    are fatal.
    """
    walker = _Validator(str(file), masks, read_images)
    if walker.structure(content):
        walker.categories(content["categories"])
        walker.images(content["images"])
        walker.annotations(content["annotations"])
        walker.content()
    return walker.result


# ----------------------------------------------------------------------------------------------
# COCO panoptic files
# ----------------------------------------------------------------------------------------------
@dataclass
class PanopticValidation(Validation):
    """What :func:`validate_coco_panoptic` found: besides :class:`Validation`'s fields, ``isthing`` ``{category id:
    bool}`` and ``annotations`` ``{image id: annotation}`` (valid annotations of valid images, segments all valid).
    ``boxes_per_category`` counts the non-crowd segments."""

    isthing: dict[int, bool] = field(default_factory=dict)
    annotations: dict[int, dict] = field(default_factory=dict)


class _PanopticValidator(_Validator):
    """The walk of a COCO panoptic file: categories with ``isthing``, images, one annotation per image with
    ``file_name`` (its PNG) and ``segments_info`` (``id``, ``category_id``, ``iscrowd``; ``area``, ``bbox``)."""

    def __init__(self, file: str) -> None:
        super().__init__(file, masks=True, read_images=True)
        self.result = PanopticValidation(file)

    def categories(self, records: list) -> None:
        super().categories(records)
        for i, cat in enumerate(records):
            if not isinstance(cat, dict) or cat.get("id") not in self.result.categories:
                continue
            isthing = cat.get("isthing")
            if isthing not in (0, 1) or isinstance(isthing, float):
                self.error(BAD_RECORD, f"categories[{i}] (id {cat['id']}): 'isthing' must be 0 (stuff) or 1 (thing), "
                           f"got {short(isthing)}", fatal=True, category_ids=(cat["id"],))
                continue
            self.result.isthing[cat["id"]] = bool(isthing)

    def annotations(self, records: list) -> None:
        seen: dict[int, int] = {}
        for i, ann in enumerate(records):
            where = f"annotations[{i}]"
            if not isinstance(ann, dict):
                self.error(BAD_RECORD, f"{where} must be an object, got {short(ann)}", fatal=True)
                continue
            image_id = ann.get("image_id")
            if not (_is_int(image_id) and image_id in self.image_ids):
                self.error(UNKNOWN_IMAGE, f"{where}: image_id {short(image_id)} is not in 'images'", fatal=True)
                continue
            where, ids = f"{where} (image {image_id})", {"image_ids": (image_id,)}
            if image_id in seen:
                self.error(DUPLICATE_PANOPTIC_ANNOTATION, f"{where}: a second annotation of the image (also "
                           f"annotations[{seen[image_id]}])", fatal=True, **ids)
                continue
            seen[image_id] = i
            file_name = ann.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                self.error(BAD_RECORD, f"{where}: 'file_name' (its PNG) must be a non-empty string, got {short(file_name)}",
                           fatal=True, **ids)
                continue
            if is_unsafe_file_name(file_name):
                self.error(UNSAFE_FILE_NAME, f"{where}: file_name {short(file_name)} points outside the panoptic folder",
                           fatal=True, **ids)
                continue
            segments = ann.get("segments_info")
            if not isinstance(segments, list):
                self.error(BAD_RECORD, f"{where}: 'segments_info' must be a list, got {short(segments)}", fatal=True, **ids)
                continue
            if self.segments(segments, where, image_id) and image_id in self.result.images:
                self.result.annotations[image_id] = ann
        for iid in sorted(set(self.result.images) - set(seen)):
            self.warn(NO_PANOPTIC_ANNOTATION, f"image {iid} has no panoptic annotation", image_ids=(iid,))

    def segments(self, segments: list, where: str, image_id: int) -> bool:
        """Check one image's ``segments_info``; True when every segment is usable."""
        seen: dict[int, int] = {}
        usable = True
        for j, seg in enumerate(segments):
            at = f"{where}: segments_info[{j}]"
            if not isinstance(seg, dict):
                self.error(BAD_RECORD, f"{at} must be an object, got {short(seg)}", fatal=True, image_ids=(image_id,))
                usable = False
                continue
            usable &= self.segment(seg, at, image_id, seen, j)
        return usable

    def segment(self, seg: dict, at: str, image_id: int, seen: dict[int, int], index: int) -> bool:
        segment_id, category_id = seg.get("id"), seg.get("category_id")
        ids: dict[str, tuple[int, ...]] = {"image_ids": (image_id,)}
        if not _is_int(segment_id) or segment_id <= VOID_SEGMENT_ID or segment_id >= 256**3:
            self.error(BAD_SEGMENT_ID, f"{at}: 'id' must be an integer in 1..{256**3 - 1} (0 is void), got "
                       f"{short(segment_id)}", fatal=True, **ids)
            return False
        if segment_id in seen:
            self.error(DUPLICATE_SEGMENT_ID, f"{at}: id {segment_id} is also segments_info[{seen[segment_id]}]",
                       fatal=True, **ids)
            return False
        seen[segment_id] = index
        if not (_is_int(category_id) and category_id in self.result.categories):
            self.error(UNKNOWN_CATEGORY, f"{at} (segment {segment_id}): category_id {short(category_id)} is not in "
                       f"'categories' (ids {short(sorted(self.result.categories))})", fatal=True, **ids)
            return False
        ids["category_ids"] = (category_id,)
        crowd = seg.get("iscrowd")
        if crowd not in CROWD_VALUES or isinstance(crowd, float):
            kind = MISSING_FIELD if "iscrowd" not in seg else BAD_RECORD
            self.error(kind, f"{at} (segment {segment_id}): 'iscrowd' must be 0 or 1, got {short(crowd)}", fatal=True, **ids)
            return False
        area, bbox = seg.get("area"), seg.get("bbox")
        if "area" in seg and (_numbers_state([area]) != "finite" or area < 0):
            self.error(BAD_RECORD, f"{at} (segment {segment_id}): 'area' must be a finite number >= 0, got {short(area)}",
                       fatal=True, **ids)
            return False
        if "bbox" in seg and not (isinstance(bbox, list) and len(bbox) == BOX_VALUES and _numbers_state(bbox) == "finite"
                                  and bbox[2] >= 0 and bbox[3] >= 0):
            self.error(BAD_RECORD, f"{at} (segment {segment_id}): 'bbox' must be [x, y, width, height] with width, "
                       f"height >= 0, got {short(bbox)}", fatal=True, **ids)
            return False
        if not crowd:
            self.result.boxes_per_category[category_id] += 1
        return True

    def content(self) -> None:
        result = self.result
        if result.images and not result.boxes_per_category:
            self.error(NO_ANNOTATIONS, "no (non-crowd) segments in the whole file")
            return
        for cid in sorted(set(result.categories) - set(result.boxes_per_category)):
            self.warn(UNUSED_CATEGORY, f"category {cid} ({result.categories[cid]}) has no segments", category_ids=(cid,))


def validate_coco_panoptic(content: Any, file: str = "annotations") -> PanopticValidation:
    """Every problem of a COCO panoptic annotation dict (``content``, any JSON value) read from ``file``.

    The file: ``categories`` (``id``, ``name``, ``isthing`` 0/1), ``images`` (``id``, ``file_name``, integer
    ``width``/``height``) and ``annotations``, one per image: ``image_id``, ``file_name`` (the PNG whose colours
    are the segment ids) and ``segments_info`` (``id`` 1..256^3-1, unique in the image; ``category_id``;
    ``iscrowd`` 0/1; optional ``area`` and ``bbox``). The PNGs are not read here. Never raises.
    """
    walker = _PanopticValidator(str(file))
    if walker.structure(content):
        walker.categories(content["categories"])
        walker.images(content["images"])
        walker.annotations(content["annotations"])
        walker.content()
    return walker.result  # type: ignore[return-value]


def is_panoptic_content(content: Any) -> bool:
    """True for a COCO panoptic annotation dict: its annotations carry ``segments_info`` (detection ones do not)."""
    annotations = content.get("annotations") if isinstance(content, dict) else None
    return isinstance(annotations, list) and any(isinstance(a, dict) and "segments_info" in a for a in annotations)
