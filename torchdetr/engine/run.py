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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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
from .checkpoint import CHECKPOINT_NAME, checkpoint_dict, non_finite_entries, write_checkpoints
from .datasets import load_run_data, resolve_num_classes
from .evaluate import EvalResult, evaluate, evaluate_model
from .loaders import make_loaders, set_epoch
from .loop import TrainingDiverged, train_one_epoch
from .optim import build_optimizer
from .run_dir import RunDirectory, claim_output_dir, output_errors
from .run_log import COCO_STATS_KEYS, LOG_FILE, RunLog, epoch_row, logged_row
from .run_model import RunModel, build_run_model
from .runtime import isolated_rng, rng_state, set_rng_state, start_process
from .start import ResumedState, resume_training

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


def train(
    cfg: DETRConfig,
    *,
    datasets: tuple[Dataset | None, Dataset] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train (or only evaluate, with ``cfg.eval``) as ``python main.py`` of the original.

    ``datasets`` (train, val) overrides building them from ``cfg`` (used by tests and benchmarks).
    ``cfg.num_classes`` of ``None`` means: infer it from the data (max category id + 1).
    ``on_epoch_end`` is called with the log row of each epoch this call trains.

    The output folder is held for the whole run (see :mod:`~torchdetr.engine.run_dir`): locked, an
    earlier run in it refused unless continued (``--resume auto``) or replaced (``--overwrite``).
    """
    device, dist_info = start_process(cfg.device, cfg.seed, cfg.dist_url)
    with claim_output_dir(cfg) as directory:
        if cfg.eval and cfg.resume == RESUME_AUTO and not directory.resume:
            raise MissingFileError(f"--eval --resume auto: no usable checkpoint in {directory.path} to evaluate")
        cfg = cfg.replace(resume=directory.resume)
        if cfg.eval:
            with output_errors(directory.path):
                evaluation = evaluate_model(cfg, dataset=None if datasets is None else datasets[1])
            return TrainResult(model=evaluation.model, config=evaluation.config, eval=evaluation.result,
                               output_dir=evaluation.output_dir)
        return _train(cfg, directory, device, dist_info.distributed, datasets, on_epoch_end)


def _train(
    cfg: DETRConfig,
    directory: RunDirectory,
    device: torch.device,
    distributed: bool,
    datasets: tuple[Dataset | None, Dataset] | None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
) -> TrainResult:
    """The run itself, in the output folder ``directory`` holds (see :func:`train`)."""
    output_dir = directory.path
    data = load_run_data(cfg, datasets=datasets)
    cfg = resolve_num_classes(cfg, data.coco_gt)
    if data.train is None or len(data.train) == 0:
        raise DataError("the training set is empty: nothing to train on")

    run = build_run_model(cfg, device, distributed)
    loader_train, loader_val = make_loaders(data.train, data.val, cfg)
    optimizer, lr_scheduler, per_iteration = build_optimizer(run.train_module, cfg, len(loader_train))
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    resumed = ResumedState(start_epoch=cfg.start_epoch)
    if cfg.resume:
        resumed = resume_training(cfg.resume, run.model, optimizer, lr_scheduler, cfg.start_epoch,
                                  training_queries=run.training_queries, ema=run.ema, scaler=scaler,
                                  checkpoint=directory.checkpoint)
        directory.checkpoint = None  # the tensors now live in the model and optimiser
    last_good = Path(cfg.resume) if cfg.resume and Path(cfg.resume).is_file() else None

    def evaluate_epoch(print_tables: bool) -> EvalResult:
        """COCO evaluation of the current weights, drawing nothing from the training's random generators."""
        with isolated_rng(), output_errors(output_dir):
            return evaluate(run.eval_module, run.criterion, run.postprocessors, loader_val, data.coco_gt, device, cfg,
                            output_dir=output_dir, category_names=data.category_names, print_tables=print_tables)

    result = TrainResult(model=run.model, config=cfg, output_dir=output_dir)
    run_log = RunLog(output_dir)
    try:
        evaluated = _complete_log(run_log, resumed, cfg, output_dir, evaluate_epoch, run.n_parameters)
        if evaluated is not None:
            result.eval = evaluated
        _restore_random_state(resumed, loader_train.generator)

        deadline = time.monotonic() + cfg.time_budget * SECONDS_PER_MINUTE if cfg.time_budget > 0 else None
        if resumed.start_epoch >= cfg.epochs:
            log.info("nothing to train: the run has finished its %d epochs", cfg.epochs)
        else:
            log.info("training %d epochs from epoch %d: %d images, %d iterations per epoch (batch %d)", cfg.epochs,
                     resumed.start_epoch, len(data.train), len(loader_train), cfg.batch_size)
        train_start = time.monotonic()
        for epoch in range(resumed.start_epoch, cfg.epochs):
            set_epoch(loader_train, epoch)
            epoch_start = time.monotonic()
            try:
                train_stats, iterations = train_one_epoch(
                    run.train_module, run.train_criterion, loader_train, optimizer, device, epoch, cfg,
                    scaler=scaler, deadline=deadline, lr_scheduler=lr_scheduler if per_iteration else None,
                    ema=run.ema)
            except TrainingDiverged as err:
                raise TrainingDiverged(_diverged_message(str(err), last_good)) from None
            result.iterations += iterations
            if not per_iteration:
                lr_scheduler.step()
            out_of_time = deadline is not None and time.monotonic() >= deadline
            evaluate_now = (epoch + 1) % max(cfg.eval_every, 1) == 0 or epoch == cfg.epochs - 1 or out_of_time
            train_time = time.monotonic() - epoch_start

            # the checkpoint: never with non-finite values; with the random state the next epoch starts from
            # and the log rows so far (+ this epoch's training part), so a kill at any later moment loses nothing
            bad = non_finite_entries(_checked_state(run, optimizer))
            if bad:
                raise TrainingDiverged(_diverged_message(
                    f"the weights became non-finite during epoch {epoch} ({', '.join(b.rstrip('/') for b in bad[:3])})",
                    last_good))
            rng = du.gather_objects(rng_state(loader_train.generator))
            if output_dir is not None and du.is_main_process():
                extras = run.checkpoint_extras()
                if scaler is not None:
                    extras["scaler"] = scaler.state_dict()
                state = checkpoint_dict(
                    run.model, optimizer, lr_scheduler, epoch, cfg, **data.checkpoint_entries(), rng=rng,
                    run_log={"rows": run_log.rows, "pending": {"train_stats": train_stats, "evaluate": evaluate_now,
                                                               "train_time": train_time}}, **extras)
                write_checkpoints(state, output_dir, epoch, cfg.lr_drop)
                last_good = output_dir / CHECKPOINT_NAME
            evaluated = None
            if evaluate_now:
                result.eval = evaluated = evaluate_epoch(print_tables=epoch == cfg.epochs - 1 or out_of_time)
            row = epoch_row(epoch, train_stats, evaluated.test_stats() if evaluated else None,
                            evaluated.coco_stats if evaluated else None, run.n_parameters,
                            time.monotonic() - epoch_start)
            result.history.append(row)
            run_log.write(row)
            _log_epoch(row)
            if on_epoch_end is not None:
                on_epoch_end(row)
            if out_of_time:
                log.info("time budget of %.1f min reached after epoch %d", cfg.time_budget, epoch)
                break
        result.train_seconds = time.monotonic() - train_start
    finally:
        run_log.close()
    du.cleanup()
    return result


def _complete_log(
    run_log: RunLog,
    resumed: ResumedState,
    cfg: DETRConfig,
    output_dir: Path | None,
    evaluate_epoch: Callable[[bool], EvalResult],
    n_parameters: int,
) -> EvalResult | None:
    """Make ``log.txt`` hold every epoch up to the resumed one exactly once (see ``RunLog.resume``).

    The resumed epoch's row is taken from ``log.txt``, else from the log of the folder the checkpoint
    comes from, else finished now from the training row the checkpoint carries (evaluating its weights
    again when that epoch was evaluated); returns that evaluation, if any.
    """
    saved = resumed.run_log or {}
    finished = run_log.resume(saved.get("rows"), resumed.epoch)
    pending = saved.get("pending")
    if finished is None and pending is not None and output_dir is not None and du.is_main_process():
        source = Path(cfg.resume)  # a run continued in another folder: its own log may have the row
        finished = logged_row(source.parent / LOG_FILE, resumed.epoch) if source.is_file() else None
        if finished is not None:
            run_log.write(finished)
    if not du.broadcast_object(output_dir is not None and finished is None and pending is not None):
        return None
    start = time.monotonic()
    evaluated = evaluate_epoch(resumed.epoch == cfg.epochs - 1) if pending["evaluate"] else None
    run_log.write(epoch_row(resumed.epoch, pending["train_stats"], evaluated.test_stats() if evaluated else None,
                            evaluated.coco_stats if evaluated else None, n_parameters,
                            pending["train_time"] + time.monotonic() - start))
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


def _log_epoch(row: dict[str, Any]) -> None:
    """One line per epoch: time, train loss and, when evaluated, test loss, AP and AP50."""
    evaluated = ""
    if "test_loss" in row:
        ap = stats_dict(row[COCO_STATS_KEYS["bbox"]]) if COCO_STATS_KEYS["bbox"] in row else {"AP": NAN, "AP50": NAN}
        evaluated = f", test loss {row['test_loss']:.4f}, AP {ap['AP']:.3f}, AP50 {ap['AP50']:.3f}"
    log.info("epoch %d done in %.0fs: train loss %.4f%s", row["epoch"], row["epoch_time"], row["train_loss"], evaluated)
