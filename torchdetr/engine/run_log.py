"""What a training run records in its output folder: ``log.txt`` (one JSON object per epoch, the
original's keys), also sent to the experiment trackers of ``--logger`` (:mod:`~torchdetr.engine.loggers`:
TensorBoard scalars in ``tensorboard/`` by default). Only the main process writes.

``log.txt`` holds every epoch exactly once, whatever kills the run: each row is appended and synced
to disk after the epoch's checkpoint, and the checkpoint carries every row logged before it (see
``RunLog.resume``), so a resumed run rewrites what a kill left out or left half-written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic_write import write_atomic
from ..errors import OutputError
from . import distributed as du
from .loggers import TENSORBOARD_DIR, RunLoggers

log = logging.getLogger("torchdetr.train")

LOG_FILE = "log.txt"
__all__ = ["COCO_STATS_KEYS", "LOG_FILE", "TENSORBOARD_DIR", "RunLog", "epoch_row", "logged_row", "read_log"]
# keys of the 12 COCOeval stats in a log row, per IoU type (the original's names)
COCO_STATS_KEYS: dict[str, str] = {"bbox": "test_coco_eval_bbox", "segm": "test_coco_eval_masks"}


def prepare_output_dir(output_dir: str | Path | None) -> Path | None:
    """The run's output folder (created by the main process), or None when the run writes nothing.

    Raises ``OutputError`` naming the path when it is a file or cannot be created (permission denied,
    read-only file system…).
    """
    if not output_dir:
        return None
    path = Path(output_dir)
    if du.is_main_process():
        if path.exists() and not path.is_dir():
            raise OutputError(f"--output_dir {path} is a file, not a folder: choose a folder for the run's outputs")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"--output_dir {path}: cannot create the folder: {err.strerror or err}") from None
    return path


def epoch_row(
    epoch: int,
    train_stats: dict[str, float],
    test_stats: dict[str, Any] | None,
    coco_stats: dict[str, list[float]] | None,
    n_parameters: int,
    epoch_time: float,
) -> dict[str, Any]:
    """The log row of one epoch: ``train_*``, ``test_*`` (when evaluated; with PQ, ``test_PQ_all``, ``test_PQ_th``,
    ``test_PQ_st`` = ``{pq, sq, rq, n}`` as the original), ``test_coco_eval_bbox``/``_masks``, ``epoch``,
    ``n_parameters``, ``epoch_time``."""
    row: dict[str, Any] = {f"train_{k}": v for k, v in train_stats.items()}
    row.update({f"test_{k}": v for k, v in (test_stats or {}).items()})
    for iou_type, key in COCO_STATS_KEYS.items():
        if (coco_stats or {}).get(iou_type) is not None:
            row[key] = coco_stats[iou_type]
    row.update({"epoch": epoch, "n_parameters": n_parameters, "epoch_time": epoch_time})
    return row


class RunLog:
    """Appends epoch rows to ``output_dir/log.txt`` and to the run's trackers (``loggers``); writes nothing
    without an output folder or on processes other than the main one. ``rows`` are the rows logged so far
    (what checkpoints carry)."""

    def __init__(self, output_dir: Path | None, loggers: RunLoggers | None = None) -> None:
        self.output_dir = output_dir if du.is_main_process() else None
        self.path = self.output_dir / LOG_FILE if self.output_dir is not None else None
        self.rows: list[dict[str, Any]] = []
        self.loggers = loggers if self.output_dir is not None else None

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` (see :func:`epoch_row`) as a JSON line (synced to disk), then send it to the trackers."""
        self.rows.append(row)
        if self.path is None:
            return
        self._append(json.dumps(row) + "\n")
        if self.loggers is not None:
            self.loggers.log_row(row)

    def _append(self, line: str) -> None:
        """Append one line and sync it; on failure (disk full…) cut the file back to its old end."""
        with self.path.open("a") as f:
            end = f.tell()
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            except OSError as err:
                try:
                    f.truncate(end)
                except OSError:
                    pass
                raise OutputError(f"{self.path}: could not write the epoch's log row: {err.strerror or err}") from None

    def resume(self, saved_rows: Sequence[Mapping[str, Any]] | None, epoch: int | None) -> dict[str, Any] | None:
        """Make ``log.txt`` hold each epoch up to ``epoch`` once, as the checkpoint a run continues from knows them.

        ``epoch`` is the checkpoint's epoch (None: a fresh start); ``saved_rows`` the rows logged before it
        (the checkpoint's ``run_log["rows"]``; None for checkpoints without them, whose epochs up to
        ``epoch`` are then kept as ``log.txt`` has them, once each). Rows of later epochs (trained again
        now) and half-written lines are dropped, a warning says so, and the file is replaced atomically.
        Returns the complete row of ``epoch`` when ``log.txt`` already holds it (the run was stopped
        after logging it), else None: the caller then finishes that epoch's row.
        """
        existing, unreadable, unterminated = read_log(self.path) if self.path is not None else ([], 0, False)
        last = -1 if epoch is None else epoch
        finished = next((row for row in reversed(existing) if row["epoch"] == epoch), None)
        if saved_rows is not None:
            kept = [dict(row) for row in saved_rows if row["epoch"] < last]
        else:
            by_epoch = {row["epoch"]: row for row in existing if row["epoch"] < last}
            kept = [by_epoch[e] for e in sorted(by_epoch)]
        self.rows = kept + ([finished] if finished is not None else [])
        if self.path is None:
            return finished
        lines = [json.dumps(row) for row in self.rows]
        if lines != [json.dumps(row) for row in existing] or unreadable or unterminated:
            changes = []
            if unreadable:
                changes.append(f"{unreadable} unreadable (half-written) line(s) dropped")
            later = sorted({row["epoch"] for row in existing if row["epoch"] > last})
            if later:
                changes.append(f"rows of epochs {_epochs_text(later)} dropped (after the checkpoint of epoch {last}: "
                               "they are trained again)")
            if len(existing) - len(later) > len(self.rows):
                changes.append("repeated rows dropped")
            restored = sorted({row["epoch"] for row in self.rows} - {row["epoch"] for row in existing})
            if restored:
                changes.append(f"rows of epochs {_epochs_text(restored)} restored from the checkpoint")
            log.warning("%s: %s", self.path, "; ".join(changes) or "last line completed")
            text = "".join(line + "\n" for line in lines).encode()
            write_atomic(self.path, lambda f: f.write(text), what="log")
        return finished

    def close(self) -> None:
        if self.loggers is not None:
            self.loggers.close()


def read_log(path: Path) -> tuple[list[dict[str, Any]], int, bool]:
    """The rows of a ``log.txt`` (none when it does not exist), the number of lines that are not a row
    (half-written), and whether the last line lacks its newline."""
    if not path.exists():
        return [], 0, False
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise OutputError(f"{path}: cannot read the run's log: {err.strerror or err}") from None
    rows, unreadable = [], 0
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
        else:
            unreadable += 1
    return rows, unreadable, bool(text) and not text.endswith("\n")


def logged_row(path: Path, epoch: int) -> dict[str, Any] | None:
    """The row of ``epoch`` in the log file ``path`` (e.g. of the run a checkpoint comes from), or None."""
    try:
        rows, _, _ = read_log(path)
    except OutputError:
        return None
    return next((row for row in reversed(rows) if row["epoch"] == epoch), None)


def _epochs_text(epochs: list[int]) -> str:
    return ", ".join(map(str, epochs)) if len(epochs) <= 6 else f"{epochs[0]}–{epochs[-1]} ({len(epochs)} epochs)"
