"""The best model of a run and early stopping: ``checkpoint_best.pth``, ``--best_metric``, ``--patience``.

The best-so-far and the patience counter are a function of the run's log rows: :class:`BestTracker`
replays the evaluated rows of ``log.txt`` (which a resumed run first makes consistent with its checkpoint,
see :mod:`~torchdetr.engine.run_log`), so a resumed run continues with exactly the best value, best epoch
and count of evaluations without improvement that an uninterrupted run has at that epoch. Each row
records them (``best_epoch``, ``best_<metric>``, ``evaluations_without_improvement``).

``checkpoint_best.pth`` holds the weights to ship (``model``, ``ema`` with ``--ema``), ``epoch``, ``args``,
``categories`` and ``best`` (``{"metric", "value", "epoch"}``); no optimiser state. It is written
atomically after the epoch's evaluation and before its log row, so the row that names a best epoch is
never on disk before the file holding that epoch's weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UserError
from ..evaluation.tables import STAT_NAMES
from . import distributed as du

log = logging.getLogger("torchdetr.train")

BEST_CHECKPOINT_NAME = "checkpoint_best.pth"
BBOX_STATS_KEY = "test_coco_eval_bbox"  # the 12 COCO bbox stats in a log row (run_log.COCO_STATS_KEYS["bbox"])
PANOPTIC_KEY = "test_PQ_all"  # the original's panoptic row entry: {"pq", "sq", "rq", "n"}
LOWER_IS_BETTER = frozenset({"loss"})
BEST_EPOCH_KEY = "best_epoch"
STALE_KEY = "evaluations_without_improvement"


def best_value_key(metric: str) -> str:
    """The log-row key of the best value so far: ``best_AP``, ``best_loss``…"""
    return f"best_{metric}"


def metric_value(row: Mapping[str, Any], metric: str) -> float | None:
    """``metric`` (``AP``, ``AP50``, ``loss``, ``PQ``) of an evaluated log row; None when the row was not
    evaluated (no ``test_loss``). Raises ``ConfigError`` when an evaluated row lacks it (``PQ`` of a run
    without panoptic evaluation)."""
    if "test_loss" not in row:
        return None
    if metric == "loss":
        return float(row["test_loss"])
    if metric in ("AP", "AP50"):
        stats = row.get(BBOX_STATS_KEY)
        if stats:
            return float(stats[STAT_NAMES.index(metric)])
    elif metric == "PQ":
        panoptic = row.get(PANOPTIC_KEY)
        if isinstance(panoptic, Mapping) and "pq" in panoptic:
            return float(panoptic["pq"])
    raise ConfigError(f"--best_metric {metric}: the evaluation of epoch {row.get('epoch')} gives no {metric} "
                      f"(its results: {', '.join(k for k in row if k.startswith('test_'))}); choose AP, AP50 or loss")


@dataclass
class BestRecord:
    """The best evaluation so far: ``metric``, its ``value``, the ``epoch`` it was reached at."""

    metric: str
    value: float
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "epoch": self.epoch}


class BestTracker:
    """Follows ``metric`` over the evaluations of a run: the best so far and the evaluations since it improved.

    An evaluation improves on the best when its value is higher by more than ``min_delta`` (lower, for the
    loss); the first evaluation with a finite value is the first best. ``patience`` > 0 makes
    :attr:`should_stop` true after that many evaluations in a row without improvement.
    """

    def __init__(self, metric: str, patience: int = 0, min_delta: float = 0.0) -> None:
        self.metric = metric
        self.patience = patience
        self.min_delta = min_delta
        self.best: BestRecord | None = None
        self.stale = 0  # evaluations since the last improvement

    def improves(self, value: float) -> bool:
        """Whether ``value`` would be a new best."""
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.metric in LOWER_IS_BETTER:
            return value < self.best.value - self.min_delta
        return value > self.best.value + self.min_delta

    def update(self, row: Mapping[str, Any]) -> bool:
        """Take an epoch's log row into account; True when it is a new best (False for rows not evaluated)."""
        value = metric_value(row, self.metric)
        if value is None:
            return False
        if self.improves(value):
            self.best = BestRecord(self.metric, value, int(row["epoch"]))
            self.stale = 0
            return True
        self.stale += 1
        return False

    def replay(self, rows: Iterable[Mapping[str, Any]]) -> BestTracker:
        """Update with each row in order (a resumed run's rows so far); returns self."""
        for row in rows:
            self.update(row)
        return self

    @property
    def should_stop(self) -> bool:
        """Early stopping: ``patience`` evaluations in a row without improvement."""
        return self.patience > 0 and self.best is not None and self.stale >= self.patience

    def row_entries(self) -> dict[str, Any]:
        """What a log row records: ``best_epoch``, ``best_<metric>``, ``evaluations_without_improvement``."""
        if self.best is None:
            return {}
        return {BEST_EPOCH_KEY: self.best.epoch, best_value_key(self.metric): self.best.value, STALE_KEY: self.stale}

    def stop_message(self) -> str:
        """Why the run stops early."""
        assert self.best is not None
        delta = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return (f"early stopping: {self.metric} has not improved{delta} for {self.stale} evaluation(s) (--patience "
                f"{self.patience}); the best, {self.metric} {self.best.value:.4f}, is epoch {self.best.epoch} "
                f"({BEST_CHECKPOINT_NAME})")


def update_on_every_process(tracker: BestTracker, row: Mapping[str, Any]) -> bool:
    """``tracker.update(row)`` on the main process (the only one holding COCO stats); its outcome on every process.

    Every process gets the same answer, best and patience count, or ends with the same error: a ``UserError``
    of the main process (``--best_metric PQ`` of a run without panoptic evaluation) is raised on every process,
    so each prints the same one line; any other failure (a bug) raises on the main process with its traceback
    and a ``RuntimeError`` that points there on the others.
    """
    improved, failure = False, None
    if du.is_main_process():
        try:
            improved = tracker.update(row)
        except Exception as err:  # stop every process, not only the main one
            failure = err
    user_error = failure if isinstance(failure, UserError) else None
    improved, tracker.best, tracker.stale, failed, user_error = du.broadcast_object(
        (improved, tracker.best, tracker.stale, failure is not None, user_error))
    if failure is not None:
        raise failure
    if user_error is not None:
        raise user_error
    if failed:
        raise RuntimeError("the main process failed to evaluate --best_metric (its traceback says why)")
    return improved


def best_checkpoint_path(output_dir: Path) -> Path:
    return output_dir / BEST_CHECKPOINT_NAME
