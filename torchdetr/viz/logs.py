"""Training-log plots as in the original ``util/plot_utils.plot_logs``: one panel per field, epochs on
the x axis, train (solid) and test (dashed) curves, several runs overlaid, exponential smoothing.

A log is the ``log.txt`` a training run writes: one JSON object per epoch with keys such as
``epoch``, ``train_loss``, ``test_loss``, ``train_class_error`` and ``test_coco_eval_bbox`` (the
12 COCOeval summary numbers). COCO fields (``mAP``, ``AP50``, …) are read from that list.

Differences from the original: ``mAP`` is AP@[.50:.95] (stats[0]; the original plotted stats[1],
AP50, under that name — ask for ``AP50`` to get it), and missing epochs are skipped rather than
interpolated before smoothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import ConfigError, InputFileError, MissingFileError
from ..evaluation.tables import STAT_NAMES

LOG_NAME = "log.txt"
DEFAULT_FIELDS = ("loss", "class_error", "mAP")
# the 12 COCOeval summary numbers, in order (index into ``test_coco_eval_bbox``): the project's names
COCO_STATS: tuple[str, ...] = STAT_NAMES
# names this command accepts besides those: the original's ``mAP`` (here AP@[.50:.95]) and long size-bucket forms
COCO_STAT_ALIASES: dict[str, str] = {
    "mAP": "AP", "AP_small": "APs", "AP_medium": "APm", "AP_large": "APl",
    "AR_small": "ARs", "AR_medium": "ARm", "AR_large": "ARl",
}
COCO_EVAL_KEY = "test_coco_eval_bbox"
PANEL_SIZE = (5.0, 3.6)  # inches


def find_log(path: str | Path, log_name: str = LOG_NAME) -> Path:
    """A run directory (holding ``log_name``) or a log file itself → the log file's path."""
    path = Path(path)
    if path.is_dir():
        path = path / log_name
    if not path.is_file():
        raise MissingFileError(f"training log not found: {path}")
    return path


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of a log file, one dict per epoch (blank lines skipped)."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputFileError(f"{path}:{number}: not a JSON line ({err.msg})") from None
        if not isinstance(record, dict):
            raise InputFileError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise InputFileError(f"{path}: the log is empty")
    return records


def ewm_mean(values: Sequence[float] | np.ndarray, com: float) -> np.ndarray:
    """Exponentially weighted mean with centre of mass ``com`` (pandas ``ewm(com).mean()``, adjust=True).

    ``y_t = Σ_i (1-α)^(t-i) x_i / Σ_i (1-α)^(t-i)`` with ``α = 1 / (1 + com)``; ``com=0`` is identity.
    """
    if com < 0:
        raise ConfigError(f"smoothing (--ewm_col) must be >= 0, got {com}")
    x = np.asarray(values, dtype=np.float64)
    decay = 1.0 - 1.0 / (1.0 + com)
    out = np.empty_like(x)
    numerator = denominator = 0.0
    for t, value in enumerate(x):
        numerator = value + decay * numerator
        denominator = 1.0 + decay * denominator
        out[t] = numerator / denominator
    return out


def coco_stat_index(field_name: str) -> int | None:
    """Position of a COCO stat (``AP``, ``AP50``, … or an alias such as ``mAP``) in the 12 stats; None for other fields."""
    name = COCO_STAT_ALIASES.get(field_name, field_name)
    return COCO_STATS.index(name) if name in COCO_STATS else None


def _value(record: dict[str, Any], key: str) -> float | None:
    index = coco_stat_index(key)
    if index is not None:
        stats = record.get(COCO_EVAL_KEY)
        if not isinstance(stats, list) or len(stats) <= index:
            return None
        value = stats[index]
    else:
        value = record.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def field_series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of ``key`` (a log key such as ``train_loss``, or a COCO stat such as ``mAP``)
    over the records that have it; epochs come from ``epoch`` (else the line number from 0)."""
    epochs, values = [], []
    for index, record in enumerate(records):
        value = _value(record, key)
        if value is not None:
            epochs.append(record.get("epoch", index))
            values.append(value)
    return np.asarray(epochs, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _run_name(path: Path, log_name: str) -> str:
    return path.parent.name if path.name == log_name else path.stem


def plot_logs(
    paths: Sequence[str | Path],
    fields: Sequence[str] = DEFAULT_FIELDS,
    ewm_col: float = 0.0,
    log_name: str = LOG_NAME,
) -> Figure:
    """One panel per field, each run in its own colour; ``train_<field>`` solid, ``test_<field>``
    dashed; COCO fields (``mAP``, ``AP50``, …) from the test evaluation. ``ewm_col`` smooths."""
    if not paths:
        raise ConfigError("no training logs given")
    if not fields:
        raise ConfigError("no fields to plot (--fields)")
    runs = [(_run_name(path, log_name), read_log(path)) for path in (find_log(p, log_name) for p in paths)]
    colors = [f"C{i % 10}" for i in range(len(runs))]
    fig = Figure(figsize=(PANEL_SIZE[0] * len(fields), PANEL_SIZE[1]), layout="constrained")
    axes = fig.subplots(1, len(fields), squeeze=False)[0]
    for ax, field_name in zip(axes, fields):
        is_coco_stat = coco_stat_index(field_name) is not None
        series_keys = ([(field_name, "-")] if is_coco_stat
                       else [(f"train_{field_name}", "-"), (f"test_{field_name}", "--")])
        plotted = False
        for (name, records), color in zip(runs, colors):
            for key, style in series_keys:
                epochs, values = field_series(records, key)
                if len(values):
                    # markers where points are sparse (evaluations every few epochs, a single point)
                    marker = "." if is_coco_stat or len(values) < 2 else None
                    ax.plot(epochs, ewm_mean(values, ewm_col), style, color=color, marker=marker, label=f"{name} {key}")
                    plotted = True
        if not plotted:
            available = sorted({k for _, records in runs for r in records for k in r})
            raise ConfigError(f"--fields: {field_name!r} is in none of the logs; available keys: {', '.join(available)}")
        ax.set_title(field_name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig
