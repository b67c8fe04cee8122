"""What a training run records in its output folder: ``log.txt`` (one JSON object per epoch, the
original's keys) and TensorBoard scalars (``tensorboard/``). Only the main process writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..evaluation.tables import STAT_NAMES
from . import distributed as du

log = logging.getLogger("torchdetr.train")

LOG_FILE = "log.txt"
TENSORBOARD_DIR = "tensorboard"
# keys of the 12 COCOeval stats in a log row, per IoU type (the original's names)
COCO_STATS_KEYS: dict[str, str] = {"bbox": "test_coco_eval_bbox", "segm": "test_coco_eval_masks"}
TENSORBOARD_COCO_STATS = ("AP", "AP50")  # COCO stats also plotted as scalars ``test/AP``, ``test/AP50``
NOT_SCALARS = ("epoch", "n_parameters")  # row entries that are not curves


def prepare_output_dir(output_dir: str | Path | None) -> Path | None:
    """The run's output folder (created by the main process), or None when the run writes nothing."""
    if not output_dir:
        return None
    path = Path(output_dir)
    if du.is_main_process():
        path.mkdir(parents=True, exist_ok=True)
    return path


def epoch_row(
    epoch: int,
    train_stats: dict[str, float],
    test_stats: dict[str, float] | None,
    coco_stats: dict[str, list[float]] | None,
    n_parameters: int,
    epoch_time: float,
) -> dict[str, Any]:
    """The log row of one epoch: ``train_*``, ``test_*`` (when evaluated), ``test_coco_eval_bbox``/``_masks``,
    ``epoch``, ``n_parameters``, ``epoch_time``."""
    row: dict[str, Any] = {f"train_{k}": v for k, v in train_stats.items()}
    row.update({f"test_{k}": v for k, v in (test_stats or {}).items()})
    for iou_type, key in COCO_STATS_KEYS.items():
        if (coco_stats or {}).get(iou_type) is not None:
            row[key] = coco_stats[iou_type]
    row.update({"epoch": epoch, "n_parameters": n_parameters, "epoch_time": epoch_time})
    return row


class RunLog:
    """Appends epoch rows to ``output_dir/log.txt`` and TensorBoard; does nothing without an output folder
    or on processes other than the main one."""

    def __init__(self, output_dir: Path | None) -> None:
        self.output_dir = output_dir if du.is_main_process() else None
        self.writer = _tensorboard_writer(self.output_dir) if self.output_dir is not None else None

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` (see :func:`epoch_row`) as a JSON line and as TensorBoard scalars at step ``row["epoch"]``."""
        if self.output_dir is None:
            return
        with (self.output_dir / LOG_FILE).open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is None:
            return
        epoch = row["epoch"]
        for k, v in row.items():
            if isinstance(v, int | float) and k not in NOT_SCALARS:
                self.writer.add_scalar(k.replace("train_", "train/").replace("test_", "test/"), v, epoch)
        stats = row.get(COCO_STATS_KEYS["bbox"])
        if stats:
            for name in TENSORBOARD_COCO_STATS:
                self.writer.add_scalar(f"test/{name}", stats[STAT_NAMES.index(name)], epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard_writer(output_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a declared dependency, but stay usable without it
        log.warning("tensorboard is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR))
