"""Precision/recall curves from saved COCO evaluations (the original ``plot_precision_recall``).

An evaluation file holds COCOeval's ``eval`` dict saved with ``torch.save``: ``precision``
[T, R, K, A, M] (IoU thresholds × recall thresholds × classes × area ranges × max detections),
``recall`` [T, K, A, M], ``scores`` [T, R, K, A, M] and ``params`` (a plain dict with at least
``iouThrs`` and ``recThrs``). Entries of -1 mark classes without ground truth; unlike the original,
they are left out of the class averages instead of being averaged in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ..errors import ConfigError, InputFileError
from ..models.weight_files import read_weights_file

ABSENT = -1  # COCOeval's marker for "no ground truth for this class"
FIGURE_SIZE = (12.0, 4.5)


@dataclass
class PRCurve:
    """Class-averaged curves at one IoU threshold (area "all", largest max-detections).

    ``recall`` [R] (the recall thresholds), ``precision`` [R], ``scores`` [R] (None when the file
    has no scores), ``mean_precision`` (AP at that IoU) and ``mean_recall``.
    """

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray | None
    mean_precision: float
    mean_recall: float


def load_coco_eval(path: str | Path) -> dict[str, Any]:
    """Read an evaluation file (``torch.save`` of COCOeval's ``eval`` dict, loadable with weights_only)."""
    path = Path(path)
    data = read_weights_file(path, what="evaluation file")
    if not isinstance(data, Mapping) or not {"precision", "recall", "params"} <= set(data):
        keys = ", ".join(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise InputFileError(f"{path}: expected COCOeval's eval dict with precision, recall and params (found {keys})")
    params = data["params"]
    if not isinstance(params, Mapping) or "recThrs" not in params or "iouThrs" not in params:
        raise InputFileError(f"{path}: params must be a dict holding iouThrs and recThrs")
    return dict(data)


def _array(value: Any) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _class_mean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over classes ignoring COCOeval's -1 entries (NaN where no class has ground truth)."""
    masked = np.where(values == ABSENT, np.nan, values.astype(np.float64))
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(masked), axis=axis)
        sums = np.nansum(masked, axis=axis)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def pr_curve(data: Mapping[str, Any], iou: float = 0.5, source: str = "evaluation") -> PRCurve:
    """The class-averaged curves of one evaluation at IoU threshold ``iou`` (one of its ``iouThrs``)."""
    params = data["params"]
    iou_thresholds = np.asarray(params["iouThrs"], dtype=np.float64)
    matches = np.flatnonzero(np.isclose(iou_thresholds, iou))
    if not len(matches):
        raise ConfigError(f"{source}: --iou {iou} is not one of the evaluated IoU thresholds "
                         f"({', '.join(f'{t:.2f}' for t in iou_thresholds)})")
    t = int(matches[0])
    labels = list(params.get("areaRngLbl", ["all"]))
    area = labels.index("all") if "all" in labels else 0
    precision = _array(data["precision"])[t, :, :, area, -1]  # [R, K]
    recall = _array(data["recall"])[t, :, area, -1]  # [K]
    scores = data.get("scores")
    class_precision = _class_mean(precision, axis=1)
    class_recall = _class_mean(recall, axis=0)
    return PRCurve(
        recall=np.asarray(params["recThrs"], dtype=np.float64),
        precision=class_precision,
        scores=None if scores is None else _class_mean(_array(scores)[t, :, :, area, -1], axis=1),
        mean_precision=float(np.nanmean(class_precision)) if np.isfinite(class_precision).any() else float("nan"),
        mean_recall=float(class_recall),
    )


def plot_precision_recall(
    paths: Sequence[str | Path], iou: float = 0.5, names: Sequence[str] | None = None
) -> tuple[Figure, list[PRCurve]]:
    """Precision/recall (left) and score/recall (right) of each evaluation file, overlaid."""
    if not paths:
        raise ConfigError("no evaluation files given")
    names = list(names) if names is not None else [_display_name(Path(p)) for p in paths]
    if len(names) != len(paths):
        raise ConfigError(f"--names: got {len(names)} names for {len(paths)} evaluation files")
    return plot_pr_curves([pr_curve(load_coco_eval(path), iou, source=str(path)) for path in paths], names, iou)


def plot_pr_curves(curves: Sequence[PRCurve], names: Sequence[str], iou: float = 0.5) -> tuple[Figure, list[PRCurve]]:
    """Precision/recall (left) and score/recall (right) of each curve (see :func:`pr_curve`), overlaid."""
    fig = Figure(figsize=FIGURE_SIZE, layout="constrained")
    ax_pr, ax_scores = fig.subplots(1, 2)
    curves = list(curves)
    for curve, name, color in zip(curves, names, (f"C{i % 10}" for i in range(len(curves)))):
        label = f"{name} (AP{round(iou * 100)} {curve.mean_precision:.3f}, recall {curve.mean_recall:.3f})"
        ax_pr.plot(curve.recall, curve.precision, color=color, label=label)
        if curve.scores is not None:
            ax_scores.plot(curve.recall, curve.scores, color=color, label=name)
    for ax, title, ylabel in ((ax_pr, f"Precision / Recall (IoU {iou:.2f})", "precision"),
                              (ax_scores, "Scores / Recall", "score")):
        ax.set_title(title)
        ax.set_xlabel("recall")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig, curves


def _display_name(path: Path) -> str:
    """``run/eval/latest.pth`` → ``run/latest``: the run folder helps tell files apart."""
    run = path.parent.parent.name if path.parent.name == "eval" else path.parent.name
    return f"{run}/{path.stem}" if run else path.stem
