"""Dataset statistics: images, boxes per class, boxes per image, box sizes, image sizes.

``compute_stats(ann_file)`` counts straight from a COCO annotation file (no image is opened);
``format_stats`` prints text tables and ``plot_stats`` draws a one-page PNG summary (matplotlib, Agg).

Box sizes use COCO's evaluation buckets on the annotation ``area`` (the box's ``w * h`` when the
file has no ``area``): small < 32², medium < 96², large otherwise — the same split as AP_S/AP_M/AP_L.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic_write import replace_atomic
from ..categories import category_names_from_coco
from ..errors import DataError, MissingFileError
from .validate import read_coco_json, validate_coco

SMALL_AREA = 32**2  # COCO's area thresholds (pixels²)
MEDIUM_AREA = 96**2
SIZE_BUCKETS = ("small", "medium", "large")
PLOT_DPI = 90
BOXES_PER_IMAGE_BINS: tuple[tuple[int, int | None], ...] = ((0, 0), (1, 1), (2, 5), (6, 10), (11, 20), (21, 50), (51, 100),
                                                            (101, None))


def size_bucket(area: float) -> str:
    """COCO's size name for an object of ``area`` pixels²: ``small`` (< 32²), ``medium`` (< 96²) or ``large``."""
    if area < SMALL_AREA:
        return "small"
    return "medium" if area < MEDIUM_AREA else "large"


@dataclass
class DatasetStats:
    """Counts of one annotation file.

    Attributes:
        name: the split's name (e.g. ``train``).
        boxes_per_class: ``{category name: boxes}`` for every category, in id order (zero included).
        boxes_per_image: the number of boxes of each image, in the file's image order.
        size_buckets: ``{"small" | "medium" | "large": boxes}``.
        image_sizes: ``{(width, height): images}``.
        box_sizes: ``(w, h)`` of every box, for the plot.
    """

    name: str
    num_images: int = 0
    num_boxes: int = 0
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    boxes_per_image: list[int] = field(default_factory=list)
    size_buckets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIZE_BUCKETS, 0))
    image_sizes: Counter = field(default_factory=Counter)
    box_sizes: list[tuple[float, float]] = field(default_factory=list)

    @property
    def images_without_boxes(self) -> int:
        """Images with no box at all."""
        return sum(1 for n in self.boxes_per_image if n == 0)


def compute_stats(ann_file: Path | str, name: str | None = None) -> DatasetStats:
    """Count the images, boxes, classes and sizes of a COCO annotation file.

    Raises:
        MissingFileError: the file does not exist.
        DataError: the file is not JSON or has a fatal problem (:mod:`.validate`; run ``detr data check``
            for a full diagnosis).
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise MissingFileError(f"{ann_file}: annotation file not found")
    content, unreadable = read_coco_json(ann_file)
    problem = unreadable or validate_coco(content, str(ann_file)).first()
    if problem is not None:
        raise DataError(f"{problem.one_line()}; run `detr data check {ann_file}`")
    images, annotations = content["images"], content["annotations"]
    cat_names = category_names_from_coco(content["categories"])
    stats = DatasetStats(name or ann_file.stem.removeprefix("instances_"), num_images=len(images))
    stats.boxes_per_class = {cat_names[c]: 0 for c in sorted(cat_names)}
    per_image: Counter = Counter()
    for ann in annotations:
        bbox = ann["bbox"]
        stats.num_boxes += 1
        per_image[ann["image_id"]] += 1
        label = cat_names[ann["category_id"]]
        stats.boxes_per_class[label] = stats.boxes_per_class.get(label, 0) + 1
        area = ann.get("area", bbox[2] * bbox[3])
        stats.size_buckets[size_bucket(float(area))] += 1
        stats.box_sizes.append((float(bbox[2]), float(bbox[3])))
    stats.boxes_per_image = [per_image.get(im["id"], 0) for im in images]
    stats.image_sizes = Counter(tuple(v if isinstance(v, (int, float)) else None for v in (im.get("width"), im.get("height")))
                                for im in images)  # a malformed size (an error of the check) counts as None
    return stats


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    """Left-aligned first column, right-aligned others, two spaces apart."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]


def _bin_label(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else (str(low) if low == high else f"{low}-{high}")


def format_stats(all_stats: list[DatasetStats], max_image_sizes: int = 5) -> str:
    """Text tables, one column per split: totals, boxes per class, boxes per image, box and image sizes."""
    names = [s.name for s in all_stats]
    lines: list[str] = []

    def pct(part: int, whole: int) -> str:
        return f"{part} ({100 * part / whole:.0f}%)" if whole else str(part)

    per_image = [s.boxes_per_image or [0] for s in all_stats]
    lines += _table(["", *names], [
        ["images", *[s.num_images for s in all_stats]],
        ["boxes", *[s.num_boxes for s in all_stats]],
        ["images without boxes", *[s.images_without_boxes for s in all_stats]],
        ["boxes per image: min", *[min(p) for p in per_image]],
        ["boxes per image: median", *[f"{statistics.median(p):g}" for p in per_image]],
        ["boxes per image: mean", *[f"{statistics.fmean(p):.1f}" for p in per_image]],
        ["boxes per image: max", *[max(p) for p in per_image]],
    ])
    classes = list(dict.fromkeys(c for s in all_stats for c in s.boxes_per_class))
    lines += ["", "boxes per class"]
    lines += _table(["class", *names],
                    [[c, *[pct(s.boxes_per_class.get(c, 0), s.num_boxes) for s in all_stats]] for c in classes])
    lines += ["", "images by number of boxes"]
    lines += _table(["boxes", *names], [
        [_bin_label(lo, hi), *[sum(1 for n in s.boxes_per_image if n >= lo and (hi is None or n <= hi)) for s in all_stats]]
        for lo, hi in BOXES_PER_IMAGE_BINS])
    lines += ["", f"box sizes (COCO area ranges: small < {SMALL_AREA}, medium < {MEDIUM_AREA} px²)"]
    lines += _table(["size", *names], [[b, *[pct(s.size_buckets[b], s.num_boxes) for s in all_stats]] for b in SIZE_BUCKETS])
    lines += ["", "image sizes (width x height)"]
    sizes = Counter()
    for s in all_stats:
        sizes.update(s.image_sizes)
    top = [wh for wh, _ in sizes.most_common(max_image_sizes)]
    rows = [[f"{w}x{h}", *[s.image_sizes.get((w, h), 0) for s in all_stats]] for w, h in top]
    if len(sizes) > len(top):
        rows.append([f"{len(sizes) - len(top)} other sizes", *[s.num_images - sum(s.image_sizes.get(wh, 0) for wh in top)
                                                               for s in all_stats]])
    lines += _table(["size", *names], rows)
    return "\n".join(lines)


def plot_stats(all_stats: list[DatasetStats], out_png: Path | str) -> Path:
    """Draw a 2x2 summary (boxes per class, boxes per image, box sizes, image sizes) to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    classes = list(dict.fromkeys(c for s in all_stats for c in s.boxes_per_class))
    width = 0.8 / max(1, len(all_stats))
    ax = axes[0, 0]
    for k, s in enumerate(all_stats):
        ax.bar([i + k * width for i in range(len(classes))], [s.boxes_per_class.get(c, 0) for c in classes], width, label=s.name)
    ax.set_xticks([i + width * (len(all_stats) - 1) / 2 for i in range(len(classes))], classes,
                  rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
    ax.set_title("boxes per class")
    ax.legend()
    ax = axes[0, 1]
    top = max([max(s.boxes_per_image, default=0) for s in all_stats] + [1])
    ax.hist([s.boxes_per_image for s in all_stats], bins=min(50, top + 1), range=(-0.5, top + 0.5),
            label=[s.name for s in all_stats])
    ax.set_title("boxes per image")
    ax.set_xlabel("boxes")
    ax.set_ylabel("images")
    ax.legend()
    ax = axes[1, 0]
    for s in all_stats:
        if s.box_sizes:
            ax.scatter([w for w, _ in s.box_sizes], [h for _, h in s.box_sizes], s=4, alpha=0.4, label=s.name)
    for t, label in ((SMALL_AREA**0.5, "32²"), (MEDIUM_AREA**0.5, "96²")):
        ax.plot([1, t * t], [t * t, 1], color="gray", linewidth=0.8)
        ax.annotate(f"area {label}", (1.2, t * t * 0.5), color="gray")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("height")
    ax.set_title("box width x height (px); " + ", ".join(
        f"{s.name}: " + "/".join(str(s.size_buckets[b]) for b in SIZE_BUCKETS) for s in all_stats) + " S/M/L", fontsize=9)
    ax.legend()
    ax = axes[1, 1]
    for s in all_stats:
        sizes = [(w, h, n) for (w, h), n in s.image_sizes.items() if isinstance(w, (int, float)) and isinstance(h, (int, float))]
        if sizes:
            ax.scatter([w for w, _, _ in sizes], [h for _, h, _ in sizes], s=[10 + 5 * n ** 0.5 for *_, n in sizes],
                       alpha=0.5, label=s.name)
    ax.set_title("image width x height (px; marker area ~ count)")
    ax.legend()
    fig.suptitle(", ".join(f"{s.name}: {s.num_images} images, {s.num_boxes} boxes" for s in all_stats))
    fig.tight_layout()
    try:
        replace_atomic(out_png, lambda tmp: fig.savefig(tmp, dpi=PLOT_DPI, format="png"), what="plot")
    finally:
        plt.close(fig)
    return out_png
