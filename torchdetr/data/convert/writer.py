"""Write a :class:`~.records.SourceDataset` as a COCO dataset folder in the generic layout.

Output (see :mod:`.layout`)::

    OUT/images/<file_name>                 hard links (or copies) of the source images
    OUT/annotations/instances_train.json
    OUT/annotations/instances_val.json     (+ instances_test.json when the source defines a test split)
    OUT/conversion_report.json             counts and every problem, as printed by ConversionReport.summary()

Conventions of the output: image ids 1..N in sorted ``file_name`` order and annotation ids 1..M, both
unique across splits; category ids 1..K in the class order (an explicit list, else the source's own
order, else sorted names); boxes clipped to the real image size; ``area`` = polygon area for polygons,
else ``w * h``; ``iscrowd`` = 0.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...atomic_write import write_atomic
from ...output_paths import writing
from ..layout import IMAGES_DIR, generic_split_files
from .images import write_image
from .records import (
    BAD_BOX,
    BOX_DROP_KINDS,
    CLIPPED_BOX,
    DEGENERATE_BOX,
    DUPLICATE_BOX,
    EXIF_REENCODED,
    IMAGE_WITHOUT_LABELS,
    OUTSIDE_IMAGE,
    SIMILAR_CLASS_NAMES,
    UNKNOWN_CLASS,
    ConversionProblem,
    LabeledImage,
    SourceDataset,
)
from .split import assign_splits, check_val_fraction, hash_split

REPORT_FILE = "conversion_report.json"
BASE_SPLITS = ("train", "val")  # always written, even when empty
CLIP_TOLERANCE = 1e-3  # px: a box that sticks out less than this is clipped without a report line
DECIMALS = 3  # coordinates are written rounded to 1/1000 px


@dataclass
class ConversionReport:
    """What a conversion wrote and what it dropped or changed; saved as ``conversion_report.json``."""

    format: str
    source: str
    out_dir: str
    split_rule: str
    categories: list[str]
    splits: dict[str, dict] = field(default_factory=dict)
    counters: Counter = field(default_factory=Counter)
    problems: list[ConversionProblem] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """The class-head size DETR needs for this dataset: max category id + 1 = K + 1."""
        return len(self.categories) + 1

    def problem_counts(self) -> Counter:
        """Number of problems of each kind."""
        return Counter(p.kind for p in self.problems)

    def to_json(self) -> dict:
        """The report as a JSON-serialisable dict."""
        return {
            "format": self.format,
            "source": self.source,
            "out_dir": self.out_dir,
            "split_rule": self.split_rule,
            "categories": [{"id": i, "name": n} for i, n in enumerate(self.categories, start=1)],
            "num_classes": self.num_classes,
            "splits": self.splits,
            "counters": dict(self.counters),
            "problem_counts": dict(self.problem_counts()),
            "problems": [{"kind": p.kind, "file": p.file, "detail": p.detail, "dropped": p.dropped} for p in self.problems],
        }

    def summary(self, max_examples: int = 3) -> str:
        """A short human-readable summary: categories, split sizes, and dropped/changed things by kind."""
        lines = [f"converted {self.format} dataset {self.source} -> {self.out_dir}"]
        cats = ", ".join(f"{i}: {n}" for i, n in enumerate(self.categories, start=1))
        lines.append(f"  categories (id: name): {cats or 'none'}  -> num_classes {self.num_classes} (max id + 1)")
        lines.append(f"  split: {self.split_rule}")
        lines.append(f"  {'split':<8}{'images':>8}{'boxes':>8}{'empty':>8}")
        for name, s in self.splits.items():
            lines.append(f"  {name:<8}{s['images']:>8}{s['boxes']:>8}{s['empty_images']:>8}")
        counts = self.problem_counts()
        for title, dropped in (("dropped", True), ("kept, with a note", False)):
            kinds = [k for k in sorted(counts) if any(p.dropped == dropped for p in self.problems if p.kind == k)]
            if not kinds:
                continue
            lines.append(f"  {title}: " + ", ".join(f"{counts[k]} {k}" for k in kinds))
            for kind in kinds:
                examples = [p for p in self.problems if p.kind == kind][:max_examples]
                lines.extend(f"    {kind}: {p.file}: {p.detail}" for p in examples)
        if not self.problems:
            lines.append("  nothing dropped")
        lines.append(f"  full report: {Path(self.out_dir) / REPORT_FILE}")
        return "\n".join(lines)


def _num(value: float) -> float | int:
    """Round to :data:`DECIMALS` places; integers are written without a fraction."""
    value = round(float(value), DECIMALS)
    return int(value) if value.is_integer() else value


def _polygon_area(flat: Sequence[float]) -> float:
    """Shoelace area of a polygon given as ``[x1, y1, x2, y2, ...]``."""
    xs, ys = flat[0::2], flat[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2.0


def resolve_categories(explicit: Sequence[str] | None, source: SourceDataset) -> list[str]:
    """The class order: the explicit list, else the source's own order (YOLO), else sorted label names."""
    if explicit is not None:
        return list(explicit)
    if source.class_names is not None:
        return list(source.class_names)
    return sorted({box.label for image in source.images for box in image.boxes})


class _Annotator:
    """Turns the labelled boxes of one image into COCO annotations, recording what it drops or clips."""

    def __init__(self, cat_ids: dict[str, int], problems: list[ConversionProblem], src: Path) -> None:
        self.cat_ids = cat_ids
        self.problems = problems
        self.src = src
        self.next_id = 1

    def _where(self, image: LabeledImage) -> str:
        path = image.label_file or image.source
        try:
            return path.relative_to(self.src).as_posix()
        except ValueError:
            return str(path)

    def annotations(self, image: LabeledImage, image_id: int) -> list[dict]:
        width, height = image.size
        out: list[dict] = []
        seen: set[tuple] = set()
        for box in image.boxes:
            where = self._where(image)
            shown = f"{box.label} [x={box.x:g}, y={box.y:g}, w={box.w:g}, h={box.h:g}]"
            if box.label not in self.cat_ids:
                self.problems.append(ConversionProblem(UNKNOWN_CLASS, where, f"class {box.label!r} is not in the class list"))
                continue
            if not all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h)):
                self.problems.append(ConversionProblem(BAD_BOX, where, f"{shown}: not a finite number"))
                continue
            if box.w <= 0 or box.h <= 0:
                self.problems.append(ConversionProblem(DEGENERATE_BOX, where, f"{shown}: zero or negative size"))
                continue
            x1, y1 = max(0.0, box.x), max(0.0, box.y)
            x2, y2 = min(float(width), box.x + box.w), min(float(height), box.y + box.h)
            if x2 <= x1 or y2 <= y1:
                self.problems.append(ConversionProblem(
                    OUTSIDE_IMAGE, where, f"{shown}: entirely outside the {width}x{height} image"))
                continue
            if max(x1 - box.x, y1 - box.y, box.x + box.w - x2, box.y + box.h - y2) > CLIP_TOLERANCE:
                self.problems.append(ConversionProblem(
                    CLIPPED_BOX, where, f"{shown}: clipped to the {width}x{height} image"))
            bbox = [_num(x1), _num(y1), _num(x2 - x1), _num(y2 - y1)]
            if bbox[2] <= 0 or bbox[3] <= 0:
                self.problems.append(ConversionProblem(
                    DEGENERATE_BOX, where, f"{shown}: under {10 ** -DECIMALS:g} px once clipped and rounded"))
                continue
            key = (box.label, *bbox)
            if key in seen:
                self.problems.append(ConversionProblem(DUPLICATE_BOX, where, f"{shown}: same class and box twice"))
                continue
            seen.add(key)
            ann = {"id": self.next_id, "image_id": image_id, "category_id": self.cat_ids[box.label], "bbox": bbox,
                   "area": _num(bbox[2] * bbox[3]), "iscrowd": 0}
            if box.segmentation:
                polygons = [[_num(min(max(v, 0.0), width if i % 2 == 0 else height)) for i, v in enumerate(poly)]
                            for poly in box.segmentation]
                ann["segmentation"] = polygons
                ann["area"] = _num(sum(_polygon_area(p) for p in polygons))
            out.append(ann)
            self.next_id += 1
        return out


def write_coco_dataset(
    source: SourceDataset,
    out_dir: Path,
    *,
    fmt: str,
    src: Path,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    copy: bool = False,
) -> ConversionReport:
    """Write ``source`` under ``out_dir`` in the generic COCO layout and return the report (also saved as JSON).

    The source's own split (VOC lists, ``train``/``val`` folders) is used when it names a val split;
    a lone ``train`` folder is not a split. Other images are split by :func:`.split.hash_split` of their
    ``file_name`` (through :func:`.split.assign_splits`, which leaves neither split empty when it can).
    """
    check_val_fraction(val_fraction)
    categories = resolve_categories(class_names, source)
    cat_ids = {name: i for i, name in enumerate(categories, start=1)}
    problems = [*source.problems, *_similar_class_names(categories)]
    images = sorted(source.images, key=lambda im: im.file_name)
    split_of, split_rule = _plan_splits(images, source.split_rule, seed, val_fraction)
    counters: Counter = Counter()
    annotator = _Annotator(cat_ids, problems, src)
    coco: dict[str, dict[str, list]] = {}
    for image_id, image in enumerate(images, start=1):
        how = _place_image(image, out_dir, copy, problems)
        counters[how] += 1
        split = coco.setdefault(split_of[image.file_name], {"images": [], "annotations": []})
        width, height = image.size
        split["images"].append({"id": image_id, "file_name": image.file_name, "width": width, "height": height})
        split["annotations"].extend(annotator.annotations(image, image_id))
    info = {"description": f"converted from {fmt} by torchdetr (detr data convert)", "source": str(src)}
    splits_summary = {name: _write_split(out_dir, name, data, cat_ids, info)
                      for name, data in _all_splits(coco).items()}
    counters["boxes_read"] = sum(len(im.boxes) for im in source.images) + sum(
        1 for p in source.problems if p.kind in BOX_DROP_KINDS)  # boxes of readable label files with images
    counters["boxes_written"] = annotator.next_id - 1
    report = ConversionReport(fmt, str(src), str(out_dir), split_rule, categories, splits_summary, counters, problems)
    _write_json(out_dir / REPORT_FILE, report.to_json(), indent=1)
    return report


def _similar_class_names(categories: Sequence[str]) -> list[ConversionProblem]:
    """A note for each group of class names that differ only in case or spaces ("RBC", "rbc ")."""
    by_key: dict[str, list[str]] = {}
    for name in categories:
        by_key.setdefault(" ".join(name.casefold().split()), []).append(name)
    return [ConversionProblem(SIMILAR_CLASS_NAMES, "(classes)", f"{names}: separate classes; meant to be one?")
            for names in by_key.values() if len(names) > 1]


def _plan_splits(images: list[LabeledImage], source_rule: str | None, seed: int,
                 val_fraction: float) -> tuple[dict[str, str], str]:
    """``({file_name: split}, how the split was decided)``: the source's own split, else the hash split."""
    has_val = any(im.split == "val" for im in images)
    # a source that names a train split but no val split (a lone train/ folder) is split by hash instead
    given = {im.file_name: im.split for im in images if im.split is not None and (has_val or im.split != "train")}
    unassigned = [im.file_name for im in images if im.file_name not in given]
    hash_rule = f"hash of the file name (seed {seed}, val_fraction {val_fraction})"
    rule = source_rule if given and source_rule else hash_rule
    if given and unassigned:
        rule += f"; the other {len(unassigned)} images by {hash_rule}"
    hashed = {name: hash_split(name, seed, val_fraction) for name in unassigned} if has_val else \
        assign_splits(unassigned, seed, val_fraction)
    return given | hashed, rule


def _place_image(image: LabeledImage, out_dir: Path, copy: bool, problems: list[ConversionProblem]) -> str:
    """Write the picture to ``out_dir/images/<file_name>``; return the counter it adds to (``images_linked``, ...)."""
    dst = out_dir / IMAGES_DIR / image.file_name
    with writing(dst, what="image"):
        if image.data is not None:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(image.data)
            return "images_extracted"
        how = write_image(image.source, dst, header=image.header, upright=image.upright, copy=copy)
    if how == "reencode":
        frame = "upright (EXIF applied)" if image.upright else "as stored (tag dropped)"
        problems.append(ConversionProblem(
            EXIF_REENCODED, image.file_name, f"EXIF orientation {image.header.orientation}: pixels written {frame}"))
    if image.label_file is None:
        problems.append(ConversionProblem(
            IMAGE_WITHOUT_LABELS, image.file_name, "no label file: kept as an image without objects"))
    return {"link": "images_linked", "copy": "images_copied", "reencode": "images_reencoded"}[how]


def _write_json(path: Path, content: dict, indent: int | None = None) -> None:
    """Write a JSON file atomically (``torchdetr.atomic_write``: never a partial file; failures name ``path``)."""
    write_atomic(path, lambda f: f.write(json.dumps(content, indent=indent).encode()), what="annotation file")


def _all_splits(coco: dict[str, dict[str, list]]) -> dict[str, dict[str, list]]:
    """The splits to write: train and val always (maybe empty), then the others the source defines."""
    names = [*BASE_SPLITS, *sorted(set(coco) - set(BASE_SPLITS))]
    return {name: coco.get(name, {"images": [], "annotations": []}) for name in names}


def _write_split(out_dir: Path, split: str, data: dict[str, list], cat_ids: dict[str, int], info: dict) -> dict:
    """Write ``annotations/instances_<split>.json``; return the split's summary (counts per class, empty images)."""
    files = generic_split_files(out_dir, split)
    categories = [{"id": i, "name": n, "supercategory": "none"} for n, i in cat_ids.items()]
    content = {"info": info, "licenses": [], "images": data["images"], "annotations": data["annotations"],
               "categories": categories}
    _write_json(files.ann_file, content)
    per_class = Counter(a["category_id"] for a in data["annotations"])
    with_boxes = {a["image_id"] for a in data["annotations"]}
    return {
        "images": len(data["images"]),
        "boxes": len(data["annotations"]),
        "empty_images": sum(1 for im in data["images"] if im["id"] not in with_boxes),
        "boxes_per_class": {n: per_class.get(i, 0) for n, i in cat_ids.items()},
    }
