"""Pictures and files of the error report (``evaluation.report``): ``detr eval --report DIR`` and ``OUTPUT_DIR/report``.

``write_report`` writes into a folder::

    confusion_matrix.json            classes (background last), matrix (rows ground truth, columns prediction), conf, iou
    confusion_matrix.png             counts
    confusion_matrix_normalized.png  each ground-truth row divided by its sum
    report.json                      per-class TP/FP/FN, precision, recall, F1, F1-optimal thresholds, worst images
    report.txt                       the same table as printed
    f1_curve.png                     F1 against the score threshold, per class and over all classes
    pr_curve.png                     precision/recall and score/recall at the report's IoU
    worst_images/NN_image<ID>.png    ground truth (left) and predictions (right) of the images with most errors

Every file is replaced atomically (``atomic_write``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from ..atomic_write import replace_atomic, write_atomic
from ..engine.evaluate import EvalResult
from ..evaluation.report import (
    ALL,
    DEFAULT_CONF,
    DEFAULT_IOU,
    DEFAULT_WORST_IMAGES,
    ErrorReport,
    error_report,
    format_report_table,
)
from .draw import draw_detections
from .figure_file import save_figure
from .precision_recall import plot_pr_curves, pr_curve

REPORT_DPI = 120
CELL_INCHES = 0.45  # confusion matrix: size of one cell
MIN_MATRIX_INCHES = 5.0
MAX_ANNOTATED_CLASSES = 30  # write the numbers into the cells up to this many classes
MIN_PANEL_SIDE = 320  # worst images are enlarged to at least this many pixels on their short side
HEADER_HEIGHT = 28
PANEL_GAP = 8
WORST_DIR = "worst_images"
ImageLoader = Callable[[int], Image.Image]  # image id → RGB image


@dataclass
class Box:
    """A box to draw (``viz.draw.DrawableDetection``): xyxy pixels, score, category id, name."""

    box: tuple[float, float, float, float]
    score: float
    label: int
    name: str


def plot_confusion_matrix(report: ErrorReport, normalized: bool = False) -> Figure:
    """The (K+1)×(K+1) matrix: rows ground truth, columns prediction, background last."""
    values = report.normalized() if normalized else report.matrix
    n = len(report.classes)
    side = max(MIN_MATRIX_INCHES, CELL_INCHES * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalized else max(1, int(values.max())))
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), report.classes, rotation=90 if n > 8 else 45, ha="right" if n <= 8 else "center")
    ax.set_yticks(range(n), report.classes)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    kind = "row-normalised" if normalized else "counts"
    ax.set_title(f"confusion matrix ({kind}; score ≥ {report.conf:g}, IoU ≥ {report.iou:g})")
    if n <= MAX_ANNOTATED_CLASSES:
        top = values.max() if values.size else 0
        for (row, col), value in np.ndenumerate(values):
            if value:
                text = f"{value:.2f}" if normalized else str(int(value))
                ax.text(col, row, text, ha="center", va="center", fontsize=8,
                        color="white" if value > top / 2 else "black")
    return fig


def plot_f1_curves(report: ErrorReport, names: Mapping[int, str]) -> Figure:
    """F1 against the score threshold, per class (thin) and over all classes (thick), best thresholds marked."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for cat, sweep in report.sweeps.items():
        if cat == ALL or not len(sweep.scores):
            continue
        ax.step(sweep.scores, sweep.f1, where="post", linewidth=1, alpha=0.7, label=str(names.get(cat, cat)))
    overall = report.sweeps.get(ALL)
    if overall is not None and len(overall.scores):
        ax.step(overall.scores, overall.f1, where="post", linewidth=2.5, color="black", label="all classes")
        best = overall.best()
        if best is not None:
            ax.axvline(best[0], color="black", linestyle=":", linewidth=1)
            ax.set_title(f"F1 / score threshold (IoU {report.iou:g}); all classes best at {best[0]:.3f} "
                         f"(F1 {best[1]:.3f})")
    ax.set_xlabel("score threshold")
    ax.set_ylabel("F1")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if len(report.sweeps) <= MAX_ANNOTATED_CLASSES:
        ax.legend(fontsize=7, loc="lower left")
    return fig


def side_by_side(image: Image.Image, ground_truth: Sequence[Box], predictions: Sequence[Box], title: str) -> Image.Image:
    """Ground truth (left) and predictions (right) on copies of ``image``, under a header line."""
    scale = max(1.0, MIN_PANEL_SIDE / min(image.size))
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)

    def scaled(boxes: Sequence[Box]) -> list[Box]:
        return [Box(tuple(v * scale for v in b.box), b.score, b.label, b.name) for b in boxes]

    left = draw_detections(image, scaled(ground_truth), show_scores=False)
    right = draw_detections(image, scaled(predictions))
    canvas = Image.new("RGB", (2 * image.width + PANEL_GAP, image.height + HEADER_HEIGHT), "white")
    canvas.paste(left, (0, HEADER_HEIGHT))
    canvas.paste(right, (image.width + PANEL_GAP, HEADER_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=HEADER_HEIGHT * 5 // 9)
    draw.text((4, 4), f"ground truth ({len(ground_truth)})", fill="black", font=font)
    draw.text((image.width + PANEL_GAP + 4, 4), title, fill="black", font=font)
    return canvas


def _boxes(items: Sequence[Mapping[str, Any]], names: Mapping[int, str], score_key: str | None) -> list[Box]:
    boxes = []
    for item in items:
        x, y, w, h = (float(v) for v in item["bbox"])
        cat = int(item["category_id"])
        boxes.append(Box((x, y, x + w, y + h), float(item[score_key]) if score_key else 1.0, cat, str(names.get(cat, cat))))
    return boxes


def write_report(
    report: ErrorReport,
    out_dir: str | Path,
    coco_gt: Any,
    results: Sequence[Mapping[str, Any]],
    load_image: ImageLoader | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write the report's files (see the module docstring) into ``out_dir``; returns them.

    ``coco_gt`` (pycocotools COCO) and ``results`` (COCO results) are those the report was computed from;
    ``load_image`` (image id → RGB image) enables the worst-image pictures; ``extra`` is added to
    ``report.json`` (e.g. which model and epoch).
    """
    out = Path(out_dir)
    names = dict(zip(report.category_ids, report.classes))
    written: list[Path] = []

    def save_json(name: str, data: Any) -> None:
        text = (json.dumps(data, indent=1) + "\n").encode()
        written.append(write_atomic(out / name, lambda f: f.write(text), what="report"))

    def save_picture(name: str, fig: Figure) -> None:
        written.append(save_figure(fig, out / name, dpi=REPORT_DPI, what="report picture"))

    save_json("confusion_matrix.json", report.confusion_json())
    save_json("report.json", {**(extra or {}), **report.summary_json()})
    table = (format_report_table(report) + "\n").encode()
    written.append(write_atomic(out / "report.txt", lambda f: f.write(table), what="report"))
    save_picture("confusion_matrix.png", plot_confusion_matrix(report))
    save_picture("confusion_matrix_normalized.png", plot_confusion_matrix(report, normalized=True))
    save_picture("f1_curve.png", plot_f1_curves(report, names))
    if report.pr_eval is not None:
        fig, _ = plot_pr_curves([pr_curve(report.pr_eval, report.iou)], ["model"], report.iou)
        save_picture("pr_curve.png", fig)
    for stale in sorted((out / WORST_DIR).glob("[0-9][0-9]_image*.png")):  # pictures of an earlier report
        stale.unlink()
    if load_image is not None and report.images:
        by_image: dict[int, list[Mapping[str, Any]]] = {}
        for det in results:
            if float(det["score"]) >= report.conf and int(det["category_id"]) in names:
                by_image.setdefault(int(det["image_id"]), []).append(det)
        for rank, errors in enumerate(report.images, start=1):
            anns = [a for a in coco_gt.imgToAnns.get(errors.image_id, []) if not a.get("iscrowd", 0)]
            predictions = _boxes(by_image.get(errors.image_id, []), names, "score")
            title = (f"predictions >= {report.conf:g} ({len(predictions)}): {errors.fp} false positive(s), "
                     f"{errors.fn} missed")
            picture = side_by_side(load_image(errors.image_id), _boxes(anns, names, None), predictions, title)
            written.append(replace_atomic(out / WORST_DIR / f"{rank:02d}_image{errors.image_id}.png",
                                          lambda tmp, p=picture: p.save(tmp, format="PNG"), what="report picture"))
    return written


def write_evaluation_report(
    evaluation: EvalResult,
    out_dir: str | Path,
    dataset: Any = None,
    *,
    conf: float = DEFAULT_CONF,
    iou: float = DEFAULT_IOU,
    worst: int = DEFAULT_WORST_IMAGES,
    extra: Mapping[str, Any] | None = None,
) -> tuple[ErrorReport, list[Path]]:
    """The report of a model's evaluation (``engine.evaluate``: its box detections and ground truth) in ``out_dir``.

    ``dataset``: the evaluated split; its ``original_image(image_id)`` draws the worst images (none without it).
    """
    evaluator = evaluation.evaluator
    results = evaluator.results("bbox")
    report = error_report(evaluator.coco_gt, results, evaluator.category_names, conf, iou, evaluator.img_ids, worst)
    files = write_report(report, out_dir, evaluator.coco_gt, results, getattr(dataset, "original_image", None), extra)
    return report, files
