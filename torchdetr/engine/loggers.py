"""Experiment trackers behind one interface: TensorBoard (the default), MLflow and Weights & Biases (``--logger``).

Each tracker receives the same things: the run's config as parameters (at the start of a new run), every
number of each ``log.txt`` row at step = epoch (:func:`row_metrics`: a row's lists and dicts, such as the
12 COCO stats, become one metric per entry, ``test_coco_eval_bbox/AP``), and at the end of the run the
best checkpoint and the plots as artefacts. Only the main process logs. ``log.txt`` stays the record of
the run; trackers are appended to, never rewritten, so after a resume they may show a re-trained epoch
twice (MLflow keeps both values, W&B ignores steps it has seen).

A resumed run continues the same MLflow / W&B run: the run ids are saved in each checkpoint
(``loggers`` entry, :meth:`RunLoggers.state`). MLflow and W&B are optional extras; asking for one that is
not installed is a one-line ``MissingExtraError`` naming the extra.

Where runs go: MLflow uses ``MLFLOW_TRACKING_URI`` when set (a server, a database), else a file store
in ``OUTPUT_DIR/mlruns``; the experiment is ``MLFLOW_EXPERIMENT_NAME`` or ``torchdetr``. W&B uses its
own settings (``WANDB_PROJECT``, default ``torchdetr``; ``WANDB_MODE=offline`` for no network) and
writes its files under ``OUTPUT_DIR/wandb``. Runs are named after the output folder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import MissingExtraError
from ..evaluation.tables import STAT_NAMES

log = logging.getLogger("torchdetr.train")

TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
WANDB_DIR = "wandb"
DEFAULT_PROJECT = "torchdetr"  # MLflow experiment / W&B project when the environment names none
STEP_KEY = "epoch"  # the step of every metric
TENSORBOARD_COCO_STATS = ("AP", "AP50")  # COCO stats also plotted as scalars ``test/AP``, ``test/AP50``
NOT_TENSORBOARD_SCALARS = ("epoch", "n_parameters")
MLFLOW_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
MLFLOW_PARAM_LENGTH = 6000
MILLISECONDS = 1000


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """Every number of a log row except its ``epoch`` (the step): ``{"train_loss": 1.2, …}``.

    A list of 12 COCO stats (``test_coco_eval_bbox``) gives ``test_coco_eval_bbox/AP``, ``…/AP50``, … (the
    names of ``evaluation.tables.STAT_NAMES``); other lists give ``key/0``, ``key/1``…; dicts ``key/name``.
    Booleans and text are not metrics.
    """
    metrics: dict[str, float] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int | float):
            metrics[key] = float(value)
        elif isinstance(value, Mapping):
            for name, item in value.items():
                add(f"{key}/{name}", item)
        elif isinstance(value, list | tuple):
            names = STAT_NAMES if len(value) == len(STAT_NAMES) else range(len(value))
            for name, item in zip(names, value):
                add(f"{key}/{name}", item)

    for key, value in row.items():
        if key != STEP_KEY:
            add(key, value)
    return metrics


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The run's options as text parameters (``None`` → ``"None"``)."""
    return {key: str(value) for key, value in config.items()}


class Tracker(Protocol):
    """One experiment tracker."""

    name: str

    def log_row(self, row: Mapping[str, Any]) -> None:
        """Log an epoch's row of ``log.txt`` at step ``row["epoch"]``."""

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        """Upload/copy files (the best checkpoint, pictures) to the run."""

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue this tracker's run (its id), or ``{}``."""

    def close(self) -> None:
        """End the run (flush, mark finished)."""


class TensorBoardTracker:
    """Scalars under ``OUTPUT_DIR/tensorboard``: ``train/loss``, ``test/loss``…, ``test/AP``, ``test/AP50``."""

    name = "tensorboard"

    def __init__(self, output_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR))

    def log_row(self, row: Mapping[str, Any]) -> None:
        epoch = row[STEP_KEY]
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in NOT_TENSORBOARD_SCALARS:
                self.writer.add_scalar(key.replace("train_", "train/").replace("test_", "test/"), value, epoch)
        stats = row.get("test_coco_eval_bbox")
        if stats:
            for name in TENSORBOARD_COCO_STATS:
                self.writer.add_scalar(f"test/{name}", stats[STAT_NAMES.index(name)], epoch)
        self.writer.flush()

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        pass  # TensorBoard has no artefacts: the files stay in the output folder

    def state(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.writer.close()


class MLflowTracker:
    """An MLflow run (through ``MlflowClient``, so several runs in one process never share global state)."""

    name = "mlflow"

    def __init__(self, output_dir: Path, config: Mapping[str, Any], run_id: str | None = None) -> None:
        require_trackers([self.name])
        from mlflow import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (output_dir / MLFLOW_DIR).absolute().as_uri()
        if uri.startswith("file:"):  # MLflow 3 refuses its file store unless asked (it is in maintenance mode)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is not None:
            self.run_id = run_id
            log.info("mlflow: continuing run %s (%s)", run_id, uri)
            return
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        self.run_id = self.client.create_run(experiment_id, run_name=output_dir.absolute().name).info.run_id
        from mlflow.entities import Param

        params = [Param(k, v[:MLFLOW_PARAM_LENGTH]) for k, v in config_params(config).items()]
        for start in range(0, len(params), MLFLOW_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[start:start + MLFLOW_PARAMS_PER_CALL])
        log.info("mlflow: run %s in experiment %s (%s)", self.run_id, experiment_name, uri)

    def log_row(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * MILLISECONDS)
        metrics = [Metric(key, value, now, int(row[STEP_KEY])) for key, value in row_metrics(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """A Weights & Biases run (``WANDB_MODE=offline`` keeps it on disk, ``wandb sync`` uploads it later)."""

    name = "wandb"

    def __init__(self, output_dir: Path, config: Mapping[str, Any], run_id: str | None = None) -> None:
        require_trackers([self.name])
        import wandb

        self.wandb = wandb
        folder = output_dir / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, name=output_dir.absolute().name,
                              dir=str(output_dir), config=dict(config), id=run_id,
                              resume="allow" if run_id else None, reinit="create_new")
        log.info("wandb: run %s%s", self.run.id, " (continued)" if run_id else "")

    def log_row(self, row: Mapping[str, Any]) -> None:
        self.run.log(row_metrics(row), step=int(row[STEP_KEY]))

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        artifact = self.wandb.Artifact(f"{self.run.name}-files", type="model")
        for path in paths:
            if path.is_dir():
                artifact.add_dir(str(path), name=path.name)
            else:
                artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run.id}

    def close(self) -> None:
        self.run.finish()


class RunLoggers:
    """The trackers ``--logger`` names, used as one: ``log_row``, ``log_artifacts``, ``state``, ``close``.

    ``saved`` is a checkpoint's ``loggers`` entry (``{tracker name: state}``): trackers that have one
    continue their run. A tracker failing to log (a server down) is reported once as a warning and
    then left alone: the training goes on, ``log.txt`` keeps the record.
    """

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)
        self._failed: set[str] = set()

    def _each(self, action: str, *args: Any) -> None:
        for tracker in self.trackers:
            if tracker.name in self._failed:
                continue
            try:
                getattr(tracker, action)(*args)
            except Exception as err:  # a tracker never stops the training
                self._failed.add(tracker.name)
                log.warning("%s: %s failed (%s); no more logging to %s in this run", tracker.name, action,
                            " ".join(str(err).split())[:300], tracker.name)

    def log_row(self, row: Mapping[str, Any]) -> None:
        self._each("log_row", row)

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        existing = [Path(p) for p in paths if Path(p).exists()]
        if existing:
            self._each("log_artifacts", existing)

    def state(self) -> dict[str, Any]:
        states = {tracker.name: tracker.state() for tracker in self.trackers}
        return {name: state for name, state in states.items() if state}

    def close(self) -> None:
        self._each("close")


TRACKER_PACKAGES: dict[str, str] = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker → package (= the extra's name)


def tracker_names(logger: str) -> tuple[str, ...]:
    """``--logger`` (``tensorboard,mlflow``, ``none``) as tracker names, each once."""
    return tuple(dict.fromkeys(name for name in logger.split(",") if name and name != "none"))


def require_trackers(names: Sequence[str]) -> None:
    """Raise ``MissingExtraError`` (one line naming the extra) for a tracker whose package is not installed."""
    import importlib.util

    for name in names:
        package = TRACKER_PACKAGES.get(name)
        if package is not None and importlib.util.find_spec(package) is None:
            raise MissingExtraError(f"--logger {name} needs the {package} package: pip install 'torchdetr[{package}]'")


def make_loggers(names: Sequence[str], output_dir: Path, config: Mapping[str, Any],
                 saved: Mapping[str, Any] | None = None) -> RunLoggers:
    """The trackers ``names`` (``tensorboard``, ``mlflow``, ``wandb``) of a run writing to ``output_dir``.

    ``config``: the run's options (parameters of a new run); ``saved``: the ``loggers`` entry of the
    checkpoint a resumed run continues (the trackers' run ids). Raises ``MissingExtraError`` for a
    tracker whose package is not installed (before anything is logged).
    """
    saved = saved or {}
    trackers: list[Tracker] = []
    for name in names:
        run_id = (saved.get(name) or {}).get("run_id")
        if name == "tensorboard":
            try:
                trackers.append(TensorBoardTracker(output_dir))
            except ImportError:  # tensorboard is a declared dependency, but stay usable without it
                log.warning("tensorboard is not installed: no TensorBoard scalars")
        elif name == "mlflow":
            trackers.append(MLflowTracker(output_dir, config, run_id))
        elif name == "wandb":
            trackers.append(WandbTracker(output_dir, config, run_id))
        else:
            raise ValueError(f"unknown tracker {name!r}")
    return RunLoggers(trackers)
