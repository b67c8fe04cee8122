"""A training run, as ``python main.py`` of the original: ``train(cfg)`` reads top to bottom.

``train(cfg)`` builds everything from a ``DETRConfig``, trains for ``cfg.epochs`` (or until
``cfg.time_budget`` minutes), evaluates with COCO AP, and writes the original's files to
``cfg.output_dir``: ``checkpoint.pth`` (+ ``checkpointNNNN.pth``), ``log.txt`` (JSON lines),
``eval/latest.pth``, ``detections_bbox.json`` and TensorBoard scalars. With ``cfg.eval`` it only
evaluates (:func:`~torchdetr.engine.evaluate.evaluate_model`).

A run survives being killed at any moment (``docs/reliability.md``): each epoch's checkpoint is
written atomically before its evaluation and log row, and carries the random state the next epoch
starts from and the log rows so far; ``--resume auto`` continues from it, writes the log row a kill
left out and draws the same random numbers as an uninterrupted run.

``checkpoint_best.pth`` holds the weights of the best evaluation of ``--best_metric`` so far
(:mod:`~torchdetr.engine.best`); ``--patience N`` stops the run after N evaluations without improvement.
Both follow from the log rows, so a resumed run keeps them. Each row also goes to the experiment
trackers of ``--logger`` (:mod:`~torchdetr.engine.loggers`).

SIGTERM or SIGUSR2 (:mod:`~torchdetr.engine.stop`: preemption, ``torchrun`` shutting down) stop the run
after the step in progress: ``checkpoint.pth`` then holds that step (``partial_epoch``: the epoch, the
steps done, their loss sums), and ``--resume auto`` continues the epoch from the next step, with the
same batches and random numbers as an uninterrupted run. Under ``torchrun`` a collective that fails (a
process died, or did not answer within ``--dist_timeout``) stops every process with ``PeerLost``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import RESUME_AUTO, DETRConfig
from ..errors import DataError, MissingFileError
from ..evaluation.tables import stats_dict
from . import distributed as du
from .best import BestTracker, best_checkpoint_path, update_on_every_process
from .checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_dict,
    checkpoint_epoch,
    evaluated_weights,
    load_checkpoint,
    load_model_state,
    non_finite_entries,
    save_atomic,
    write_checkpoints,
)
from .datasets import load_run_data, resolve_num_classes
from .evaluate import EvalResult, evaluate, evaluate_model
from .loaders import make_loaders, set_epoch, skip_batches
from .loggers import make_loggers, require_trackers, tracker_names
from .loop import LossAverager, TrainingDiverged, train_one_epoch
from .optim import build_optimizer
from .run_dir import RunDirectory, claim_output_dir, output_errors
from .run_log import COCO_STATS_KEYS, LOG_FILE, RunLog, epoch_row, logged_row
from .run_model import RunModel, build_run_model
from .runtime import isolated_rng, rng_state, set_rng_state, start_process
from .start import ResumedState, resume_training
from .stop import StopRequest, StopRequested, stop_on_signals

log = logging.getLogger("torchdetr.train")

SECONDS_PER_MINUTE = 60
NAN = float("nan")


@dataclass
class TrainResult:
    """What a run produced: the last evaluation, per-epoch log rows, where things were written."""

    model: nn.Module
    config: DETRConfig
    eval: EvalResult | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: Path | None = None
    iterations: int = 0
    train_seconds: float = 0.0
    best: dict[str, Any] | None = None  # {"metric", "value", "epoch"} of checkpoint_best.pth
    best_eval: EvalResult | None = None  # the best model's evaluation (for the report; with cfg.report)
    stopped_early: bool = False
    val_dataset: Dataset | None = None
    stopped_by: str | None = None  # the signal that stopped the run in an epoch (checkpoint.pth holds that step)


Artifacts = Callable[[TrainResult], Sequence[Path]]


def train(
    cfg: DETRConfig,
    *,
    datasets: tuple[Dataset | None, Dataset] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    artifacts: Artifacts | None = None,
) -> TrainResult:
    """Train (or only evaluate, with ``cfg.eval``) as ``python main.py`` of the original.

    ``datasets`` (train, val) overrides building them from ``cfg`` (used by tests and benchmarks).
    ``cfg.num_classes`` of ``None`` means: infer it from the data (max category id + 1).
    ``on_epoch_end`` is called with the log row of each epoch this call trains. ``artifacts`` is called at
    the end of the run on the main process (e.g. to draw the report); the files it returns are sent to the
    experiment trackers with ``checkpoint_best.pth``.

    The output folder is held for the whole run (see :mod:`~torchdetr.engine.run_dir`): locked, an
    earlier run in it refused unless continued (``--resume auto``) or replaced (``--overwrite``).
    """
    if cfg.output_dir and not cfg.eval:
        require_trackers(tracker_names(cfg.logger))
    device, dist_info = start_process(cfg.device, cfg.seed, cfg.dist_url, cfg.dist_timeout)
    try:
        with stop_on_signals() as stop:
            return _claim_and_train(cfg, device, dist_info.distributed, datasets, on_epoch_end, artifacts, stop)
    except Exception as err:
        if du.is_dist() and du.is_collective_failure(err):
            raise du.peer_lost(err) from err
        raise


def _claim_and_train(
    cfg: DETRConfig,
    device: torch.device,
    distributed: bool,
    datasets: tuple[Dataset | None, Dataset] | None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
    artifacts: Artifacts | None,
    stop: StopRequest,
) -> TrainResult:
    """:func:`train` once the process has started: hold the output folder, then evaluate or train."""
    with claim_output_dir(cfg) as directory:
        if cfg.eval and cfg.resume == RESUME_AUTO and not directory.resume:
            raise MissingFileError(f"--eval --resume auto: no usable checkpoint in {directory.path} to evaluate")
        cfg = cfg.replace(resume=directory.resume)
        if cfg.eval:
            with output_errors(directory.path):
                evaluation = evaluate_model(cfg, dataset=None if datasets is None else datasets[1])
            return TrainResult(model=evaluation.model, config=evaluation.config, eval=evaluation.result,
                               output_dir=evaluation.output_dir)
        return _train(cfg, directory, device, distributed, datasets, on_epoch_end, artifacts, stop)


def _train(
    cfg: DETRConfig,
    directory: RunDirectory,
    device: torch.device,
    distributed: bool,
    datasets: tuple[Dataset | None, Dataset] | None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
    artifacts: Artifacts | None = None,
    stop: StopRequest | None = None,
) -> TrainResult:
    """The run itself, in the output folder ``directory`` holds (see :func:`train`)."""
    run = _TrainingRun(cfg, directory, device, distributed, datasets, stop)
    try:
        run.complete_log()
        run.train_epochs(on_epoch_end)
        if run.result.stopped_by is None:  # a stopped run continues later: no report, no artifacts now
            run.finish(artifacts)
    finally:
        run.run_log.close()
    du.cleanup()
    return run.result


class _TrainingRun:
    """One training run between its epochs: data, model, optimiser, resumed state, log, best checkpoint, trackers."""

    def __init__(self, cfg: DETRConfig, directory: RunDirectory, device: torch.device, distributed: bool,
                 datasets: tuple[Dataset | None, Dataset] | None, stop: StopRequest | None = None) -> None:
        self.output_dir = directory.path
        self.stop = stop
        self.device = device
        self.data = load_run_data(cfg, datasets=datasets)
        self.cfg = cfg = resolve_num_classes(cfg, self.data.coco_gt)
        if self.data.train is None or len(self.data.train) == 0:
            raise DataError("the training set is empty: nothing to train on")

        self.run_model = build_run_model(cfg, device, distributed)
        self.loader_train, self.loader_val = make_loaders(self.data.train, self.data.val, cfg)
        self.optimizer, self.lr_scheduler, self.per_iteration = build_optimizer(
            self.run_model.train_module, cfg, len(self.loader_train))
        self.scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
        self.resumed = ResumedState(start_epoch=cfg.start_epoch)
        if cfg.resume:
            self.resumed = resume_training(cfg.resume, self.run_model.model, self.optimizer, self.lr_scheduler,
                                           cfg.start_epoch, training_queries=self.run_model.training_queries,
                                           ema=self.run_model.ema, scaler=self.scaler, checkpoint=directory.checkpoint)
            directory.checkpoint = None  # the tensors now live in the model and optimiser
        self.last_good = Path(cfg.resume) if cfg.resume and Path(cfg.resume).is_file() else None

        self.result = TrainResult(model=self.run_model.model, config=cfg, output_dir=self.output_dir, val_dataset=self.data.val)
        self.tracker = BestTracker(cfg.best_metric, cfg.patience, cfg.min_delta)
        self.best_path = best_checkpoint_path(self.output_dir) if self.output_dir is not None else None
        if self.best_path is not None and du.is_main_process():
            _drop_later_best(self.best_path, self.resumed.epoch, cfg.resume)
        self.loggers = (make_loggers(tracker_names(cfg.logger), self.output_dir, cfg.to_dict(), self.resumed.loggers)
                        if self.output_dir is not None and du.is_main_process() else None)
        self.run_log = RunLog(self.output_dir, self.loggers)

    def evaluate(self, print_tables: bool, module: nn.Module | None = None) -> EvalResult:
        """COCO evaluation of the current weights (or of ``module``), drawing nothing from the training's random
        generators; ``module``'s evaluation writes no files."""
        with isolated_rng(), output_errors(self.output_dir):
            return evaluate(self.run_model.eval_module if module is None else module, self.run_model.criterion,
                            self.run_model.postprocessors, self.loader_val, self.data.coco_gt, self.device, self.cfg,
                            output_dir=self.output_dir if module is None else None,
                            category_names=self.data.category_names, print_tables=print_tables)

    def finish_epoch(self, epoch: int, train_stats: dict[str, float], evaluated: EvalResult | None,
                     epoch_time: float) -> dict[str, Any]:
        """The epoch's log row, after ``checkpoint_best.pth`` when the epoch is the best so far."""
        row = epoch_row(epoch, train_stats, evaluated.test_stats() if evaluated else None,
                        evaluated.coco_stats if evaluated else None, self.run_model.n_parameters, epoch_time)
        improved = update_on_every_process(self.tracker, row)
        if improved and self.best_path is not None and du.is_main_process():
            best = _best_state(self.run_model, epoch, self.cfg, self.data.checkpoint_entries(), self.tracker)
            save_atomic(best, self.best_path)
            log.info("epoch %d: best %s so far (%.4f): %s written", epoch, self.cfg.best_metric, self.tracker.best.value,
                     self.best_path.name)
        if improved and self.cfg.report and evaluated is not None:
            self.result.best_eval = evaluated
        row.update(self.tracker.row_entries())
        self.run_log.write(row)
        return row

    def complete_log(self) -> None:
        """The log rows (and the best so far) of the epochs before the resumed one: see :func:`_complete_log`."""
        evaluated = _complete_log(self.run_log, self.resumed, self.cfg, self.output_dir, self.evaluate, self.tracker,
                                  self.finish_epoch)
        if evaluated is not None:
            self.result.eval = evaluated

    def train_epochs(self, on_epoch_end: Callable[[dict[str, Any]], None] | None) -> None:
        """Train from the resumed epoch to ``cfg.epochs``, the time budget or early stopping; each epoch:
        train, checkpoint, evaluate (every ``eval_every`` epochs and the last), log row."""
        cfg, result, tracker = self.cfg, self.result, self.tracker
        _restore_random_state(self.resumed, self.loader_train.generator)
        deadline = time.monotonic() + cfg.time_budget * SECONDS_PER_MINUTE if cfg.time_budget > 0 else None
        start_epoch = self.resumed.start_epoch
        if start_epoch >= cfg.epochs:
            log.info("nothing to train: the run has finished its %d epochs", cfg.epochs)
        elif tracker.should_stop:
            log.info("nothing to train: the run has stopped early (%s)", tracker.stop_message())
            result.stopped_early = True
        else:
            log.info("training %d epochs from epoch %d: %d images, %d iterations per epoch (batch %d)", cfg.epochs,
                     start_epoch, len(self.data.train), len(self.loader_train), cfg.batch_size)
        train_start = time.monotonic()
        eta = EpochClock(start_epoch, cfg.epochs)
        for epoch in range(start_epoch, cfg.epochs):
            if result.stopped_early:
                break
            epoch_start = time.monotonic()
            # the first epoch of a run stopped in its middle continues from the step after the stop
            partial, self.resumed.partial_epoch = self.resumed.partial_epoch, None
            time_before = float(partial["train_time"]) if partial is not None else 0.0
            train_stats = self.train_epoch(epoch, deadline, partial)
            if train_stats is None:  # stopped on request: checkpoint.pth holds the step
                break
            out_of_time = deadline is not None and time.monotonic() >= deadline
            evaluate_now = (epoch + 1) % max(cfg.eval_every, 1) == 0 or epoch == cfg.epochs - 1 or out_of_time
            self.save_checkpoint(epoch, train_stats, evaluate_now, time_before + time.monotonic() - epoch_start)
            evaluated = None
            if evaluate_now:
                result.eval = evaluated = self.evaluate(print_tables=epoch == cfg.epochs - 1 or out_of_time)
            row = self.finish_epoch(epoch, train_stats, evaluated, time.monotonic() - epoch_start)
            result.history.append(row)
            seconds_left = eta.estimate(epoch, time.monotonic() - epoch_start)
            if du.is_main_process():  # the only process holding the evaluation's stats
                _log_epoch(row, seconds_left)
            if on_epoch_end is not None:
                on_epoch_end(row)
            if out_of_time:
                log.info("time budget of %.1f min reached after epoch %d", cfg.time_budget, epoch)
                break
            if tracker.should_stop:
                log.info("%s", tracker.stop_message())
                result.stopped_early = True
        result.train_seconds = time.monotonic() - train_start

    def train_epoch(self, epoch: int, deadline: float | None,
                    partial: dict[str, Any] | None = None) -> dict[str, float] | None:
        """One epoch of training (stopping early at ``deadline``); its averaged training stats. ``partial``: the
        progress of this epoch a checkpoint written in its middle holds. None when a stop request ended it
        (the step's checkpoint written)."""
        set_epoch(self.loader_train, epoch)
        loader_state = self.loader_train.generator.get_state()  # what draws this epoch's order: saved at a stop
        epoch_start = time.monotonic()
        averager, start_iteration = None, 0
        if partial is not None:
            averager = LossAverager(self.run_model.train_criterion.weight_dict)
            averager.load_state_dict(partial["losses"])
            start_iteration = int(partial["iteration"])
            skip_batches(self.loader_train, start_iteration)
        try:
            train_stats, iterations = train_one_epoch(
                self.run_model.train_module, self.run_model.train_criterion, self.loader_train, self.optimizer, self.device,
                epoch, self.cfg, scaler=self.scaler, deadline=deadline,
                lr_scheduler=self.lr_scheduler if self.per_iteration else None, ema=self.run_model.ema,
                stop=self.stop, start_iteration=start_iteration, averager=averager)
        except TrainingDiverged as err:
            raise TrainingDiverged(_diverged_message(str(err), self.last_good)) from None
        except StopRequested as stopped:
            train_time = (float(partial["train_time"]) if partial else 0.0) + time.monotonic() - epoch_start
            self.save_stopped(stopped, epoch, train_time, loader_state)
            self.result.stopped_by = stopped.reason
            self.result.iterations += stopped.iterations - start_iteration
            return None
        self.result.iterations += iterations
        if not self.per_iteration:
            self.lr_scheduler.step()
        return train_stats

    def save_checkpoint(self, epoch: int, train_stats: dict[str, float], evaluate_now: bool, train_time: float) -> None:
        """The epoch's checkpoint: never with non-finite values; with the random state the next epoch starts from
        and the log rows so far (+ this epoch's training part), so a kill at any later moment loses nothing."""
        bad = non_finite_entries(_checked_state(self.run_model, self.optimizer))
        if bad:
            raise TrainingDiverged(_diverged_message(
                f"the weights became non-finite during epoch {epoch} ({', '.join(b.rstrip('/') for b in bad[:3])})",
                self.last_good))
        rng = du.gather_objects(rng_state(self.loader_train.generator))
        if self.output_dir is None or not du.is_main_process():
            return
        pending = {"train_stats": train_stats, "evaluate": evaluate_now, "train_time": train_time}
        state = self.training_state(epoch, rng=rng, run_log={"rows": self.run_log.rows, "pending": pending})
        write_checkpoints(state, self.output_dir, epoch, self.cfg.lr_drop)
        self.last_good = self.output_dir / CHECKPOINT_NAME

    def training_state(self, epoch: int, **entries: Any) -> dict[str, Any]:
        """A checkpoint of the run after ``epoch``: weights, optimiser, schedule, the training-only queries,
        EMA and fp16 loss scale when used, the trackers' run ids, ``entries`` (rng, run_log, …)."""
        extras = self.run_model.checkpoint_extras()
        if self.scaler is not None:
            extras["scaler"] = self.scaler.state_dict()
        if self.loggers is not None and self.loggers.state():
            extras["loggers"] = self.loggers.state()
        return checkpoint_dict(self.run_model.model, self.optimizer, self.lr_scheduler, epoch, self.cfg,
                               **self.data.checkpoint_entries(), **entries, **extras)

    def save_stopped(self, stopped: StopRequested, epoch: int, train_time: float, loader_state: torch.Tensor) -> None:
        """``checkpoint.pth`` of the step where every process stopped, in epoch ``epoch``.

        Its ``epoch`` is the last finished one (``epoch - 1``, so tools that only know whole epochs stay
        right); ``partial_epoch`` holds the steps done and their loss sums; the random states are each
        process's now, except the loader's: the one this epoch's order was drawn with, so the resumed epoch
        draws the same batches and skips those done. No checkpointNNNN copy: it is not an epoch's end.
        """
        where = f"epoch {epoch} after iteration {stopped.iterations}"
        if non_finite_entries(_checked_state(self.run_model, self.optimizer)):
            log.warning("stopped by %s at %s; the weights are non-finite: no checkpoint written", stopped.reason, where)
            return
        rngs = du.gather_objects(rng_state(None) | {"loader": loader_state})
        if self.output_dir is None:
            log.warning("stopped by %s at %s (no --output_dir: nothing saved)", stopped.reason, where)
            return
        if not du.is_main_process():
            return
        partial = {"epoch": epoch, "iteration": stopped.iterations, "losses": stopped.averager.state_dict(),
                   "train_time": train_time}
        state = self.training_state(epoch - 1, rng=rngs, run_log={"rows": self.run_log.rows, "pending": None},
                                    partial_epoch=partial)
        save_atomic(state, self.output_dir / CHECKPOINT_NAME)
        log.warning("stopped by %s at %s: %s written; the same command with --resume auto continues from there",
                    stopped.reason, where, self.output_dir / CHECKPOINT_NAME)

    def finish(self, artifacts: Artifacts | None) -> None:
        """The best model's record and evaluation (for the report), then the run's files to the trackers."""
        result = self.result
        result.best = self.tracker.best.to_dict() if self.tracker.best is not None else None
        if self.cfg.report and self.output_dir is not None:
            result.best_eval = _best_evaluation(result, self.tracker, self.best_path, self.run_model, self.evaluate)
        if artifacts is not None and du.is_main_process():
            files = [self.best_path] if self.best_path is not None else []
            files += list(artifacts(result))
            if self.loggers is not None:
                self.loggers.log_artifacts(files)


class EpochClock:
    """The time left until the run's last epoch, from the mean duration of the epochs trained so far."""

    def __init__(self, first_epoch: int, epochs: int) -> None:
        self.first_epoch = first_epoch
        self.epochs = epochs
        self.seconds = 0.0

    def estimate(self, epoch: int, epoch_seconds: float) -> float:
        """Seconds left after ``epoch`` (which took ``epoch_seconds``)."""
        self.seconds += epoch_seconds
        done = epoch - self.first_epoch + 1
        return self.seconds / done * (self.epochs - epoch - 1)


def _best_state(run: RunModel, epoch: int, cfg: DETRConfig, data_entries: dict[str, Any],
                tracker: BestTracker) -> dict[str, Any]:
    """What ``checkpoint_best.pth`` holds: the weights to ship (+ EMA), epoch, args, the data's entries
    (categories, panoptic thing ids: ``RunData.checkpoint_entries``), best."""
    extras: dict[str, Any] = {**data_entries, "best": tracker.best.to_dict()}
    if run.ema is not None:
        extras["ema"] = run.ema.state_dict_for_checkpoint()
    return checkpoint_dict(run.model, None, None, epoch, cfg, **extras)


def _drop_later_best(best_path: Path, resumed_epoch: int | None, resume: str) -> None:
    """A ``checkpoint_best.pth`` of an epoch after the one a run continues from (a rewind, or a resume from an
    older checkpoint) belongs to epochs trained again: removed, so the file always matches ``log.txt``
    (unless it is the file the run starts from, which is replaced at the first improvement)."""
    if not best_path.is_file() or (resume and Path(resume).is_file() and Path(resume).samefile(best_path)):
        return
    epoch = checkpoint_epoch(best_path)
    if resumed_epoch is None or epoch is None or epoch > resumed_epoch:
        reason = "a fresh start" if resumed_epoch is None else f"the run continues from epoch {resumed_epoch}"
        log.warning("%s (epoch %s) removed: %s, its epoch is trained again", best_path, epoch, reason)
        best_path.unlink()


def _best_evaluation(result: TrainResult, tracker: BestTracker, best_path: Path | None, run: RunModel,
                     evaluate_epoch: Callable[..., EvalResult]) -> EvalResult | None:
    """The evaluation of the best model: kept from this process's epochs, else the best checkpoint evaluated
    again (its epoch was trained by an earlier process of a resumed run); the last evaluation without a best."""
    if tracker.best is None or result.best_eval is not None:
        return result.best_eval or result.eval
    if best_path is None or not du.broadcast_object(best_path.is_file()):
        return result.eval
    log.info("evaluating %s (epoch %d) for the report", best_path.name, tracker.best.epoch)
    state, _ = evaluated_weights(load_checkpoint(best_path))
    module = copy.deepcopy(run.ema.module if run.ema is not None else run.model)
    load_model_state(module, state, source=str(best_path))
    return evaluate_epoch(False, module)


def _complete_log(
    run_log: RunLog,
    resumed: ResumedState,
    cfg: DETRConfig,
    output_dir: Path | None,
    evaluate_epoch: Callable[[bool], EvalResult],
    tracker: BestTracker,
    finish_epoch: Callable[[int, dict[str, float], EvalResult | None, float], dict[str, Any]],
) -> EvalResult | None:
    """Make ``log.txt`` hold every epoch up to the resumed one exactly once (see ``RunLog.resume``), and
    ``tracker`` the best so far and the patience counter those rows imply.

    The resumed epoch's row is taken from ``log.txt``, else from the log of the folder the checkpoint
    comes from, else finished now from the training row the checkpoint carries (evaluating its weights
    again when that epoch was evaluated, and writing ``checkpoint_best.pth`` when it is the best); returns
    that evaluation, if any.
    """
    saved = resumed.run_log or {}
    finished = run_log.resume(saved.get("rows"), resumed.epoch)
    pending = saved.get("pending")
    if finished is None and pending is not None and output_dir is not None and du.is_main_process():
        source = Path(cfg.resume)  # a run continued in another folder: its own log may have the row
        finished = logged_row(source.parent / LOG_FILE, resumed.epoch) if source.is_file() else None
        if finished is not None:
            run_log.write(finished)
    if finished is None and pending is None and output_dir is not None and du.is_main_process():
        # a checkpoint written in the middle of the next epoch (a stop) carries the row of its epoch
        finished = next((row for row in saved.get("rows") or [] if row["epoch"] == resumed.epoch), None)
        if finished is not None:
            run_log.write(finished)
    if du.is_main_process():
        tracker.replay(run_log.rows)
    tracker.best, tracker.stale = du.broadcast_object((tracker.best, tracker.stale))
    if not du.broadcast_object(output_dir is not None and finished is None and pending is not None):
        return None
    start = time.monotonic()
    evaluated = evaluate_epoch(resumed.epoch == cfg.epochs - 1) if pending["evaluate"] else None
    finish_epoch(resumed.epoch, pending["train_stats"], evaluated, pending["train_time"] + time.monotonic() - start)
    log.info("epoch %d: log row written (the run had stopped before writing it)", resumed.epoch)
    return evaluated


def _checked_state(run: RunModel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What a checkpoint must never hold non-finite: weights, EMA weights, optimiser moments."""
    checked: dict[str, Any] = {"model": run.model.state_dict(), "optimizer": optimizer.state_dict()["state"]}
    if run.ema is not None:
        checked["ema"] = run.ema.module.state_dict()
    return checked


def _restore_random_state(resumed: ResumedState, loader_generator: torch.Generator) -> None:
    """Continue the random sequences of the run a checkpoint stopped (each process its own)."""
    if resumed.epoch is None:
        return
    states = resumed.rng
    if not states:
        log.warning("the checkpoint holds no random state (an older file): the resumed run draws other random "
                    "numbers than an uninterrupted run would")
        return
    if len(states) != du.get_world_size():
        log.warning("the checkpoint's random state is of %d process(es), this run has %d: not restored",
                    len(states), du.get_world_size())
        return
    set_rng_state(states[du.get_rank()], loader_generator)


def _diverged_message(problem: str, last_good: Path | None) -> str:
    """The divergence, where the last good checkpoint is, and what to try."""
    return (f"{problem}. Training stopped; "
            + (f"the last good checkpoint is {last_good}." if last_good else "no checkpoint was written yet.")
            + " Try a lower --lr, --clip_max_norm 0.1, or --amp none.")


def _log_epoch(row: dict[str, Any], seconds_left: float | None = None) -> None:
    """One line per epoch: time, train loss and, when evaluated, test loss, AP and AP50; the time left."""
    evaluated = ""
    if "test_loss" in row:
        ap = stats_dict(row[COCO_STATS_KEYS["bbox"]]) if COCO_STATS_KEYS["bbox"] in row else {"AP": NAN, "AP50": NAN}
        evaluated = f", test loss {row['test_loss']:.4f}, AP {ap['AP']:.3f}, AP50 {ap['AP50']:.3f}"
    eta = f"; about {_duration(seconds_left)} left" if seconds_left else ""
    log.info("epoch %d done in %.0fs: train loss %.4f%s%s", row["epoch"], row["epoch_time"], row["train_loss"], evaluated,
             eta)


def _duration(seconds: float) -> str:
    """``"7 min 05 s"``, ``"42 s"``, ``"3 h 10 min"``."""
    seconds = round(seconds)
    if seconds < SECONDS_PER_MINUTE:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, SECONDS_PER_MINUTE)
    if minutes < SECONDS_PER_MINUTE:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, SECONDS_PER_MINUTE)
    return f"{hours} h {minutes:02d} min"
