"""A training run, as ``python main.py`` of the original: ``train(cfg)`` reads top to bottom.

``train(cfg)`` builds everything from a ``DETRConfig``, trains for ``cfg.epochs`` (or until
``cfg.time_budget`` minutes), evaluates with COCO AP, and writes the original's files to
``cfg.output_dir``: ``checkpoint.pth`` (+ ``checkpointNNNN.pth``), ``log.txt`` (JSON lines),
``eval/latest.pth``, ``detections_bbox.json`` and TensorBoard scalars. With ``cfg.eval`` it only
evaluates (:func:`~torchdetr.engine.evaluate.evaluate_model`).
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

from ..config import DETRConfig
from ..errors import DataError
from ..evaluation.tables import stats_dict
from . import distributed as du
from .checkpoint import CHECKPOINT_NAME, checkpoint_dict, write_checkpoints
from .datasets import load_run_data, resolve_num_classes
from .evaluate import EvalResult, evaluate, evaluate_model
from .loaders import make_loaders, set_epoch
from .loop import TrainingDiverged, train_one_epoch
from .optim import build_optimizer
from .run_log import COCO_STATS_KEYS, RunLog, epoch_row, prepare_output_dir
from .run_model import build_run_model
from .runtime import start_process
from .start import resume_training

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
    ``on_epoch_end`` is called with each epoch's log row.
    """
    if cfg.eval:
        evaluation = evaluate_model(cfg, dataset=None if datasets is None else datasets[1])
        return TrainResult(model=evaluation.model, config=evaluation.config, eval=evaluation.result,
                           output_dir=evaluation.output_dir)
    device, dist_info = start_process(cfg.device, cfg.seed, cfg.dist_url)
    output_dir = prepare_output_dir(cfg.output_dir)
    data = load_run_data(cfg, datasets=datasets)
    cfg = resolve_num_classes(cfg, data.coco_gt)
    if data.train is None or len(data.train) == 0:
        raise DataError("the training set is empty: nothing to train on")

    run = build_run_model(cfg, device, dist_info.distributed)
    loader_train, loader_val = make_loaders(data.train, data.val, cfg)
    optimizer, lr_scheduler, per_iteration = build_optimizer(run.train_module, cfg, len(loader_train))
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    start_epoch = cfg.start_epoch
    if cfg.resume:
        start_epoch = resume_training(cfg.resume, run.model, optimizer, lr_scheduler, cfg.start_epoch,
                                      training_queries=run.training_queries, ema=run.ema)

    result = TrainResult(model=run.model, config=cfg, output_dir=output_dir)
    run_log = RunLog(output_dir)
    deadline = time.monotonic() + cfg.time_budget * SECONDS_PER_MINUTE if cfg.time_budget > 0 else None
    log.info("training %d epochs from epoch %d: %d images, %d iterations per epoch (batch %d)", cfg.epochs,
             start_epoch, len(data.train), len(loader_train), cfg.batch_size)
    train_start = time.monotonic()
    for epoch in range(start_epoch, cfg.epochs):
        set_epoch(loader_train, epoch)
        epoch_start = time.monotonic()
        try:
            train_stats, iterations = train_one_epoch(
                run.train_module, run.train_criterion, loader_train, optimizer, device, epoch, cfg, scaler=scaler,
                deadline=deadline, lr_scheduler=lr_scheduler if per_iteration else None, ema=run.ema)
        except TrainingDiverged as err:
            raise TrainingDiverged(_diverged_message(err, output_dir)) from None
        result.iterations += iterations
        if not per_iteration:
            lr_scheduler.step()
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if output_dir is not None and du.is_main_process():
            state = checkpoint_dict(run.model, optimizer, lr_scheduler, epoch, cfg, categories=data.category_names,
                                    **run.checkpoint_extras())
            write_checkpoints(state, output_dir, epoch, cfg.lr_drop)
        evaluated = None
        last = epoch == cfg.epochs - 1 or out_of_time
        if (epoch + 1) % max(cfg.eval_every, 1) == 0 or last:
            result.eval = evaluated = evaluate(
                run.eval_module, run.criterion, run.postprocessors, loader_val, data.coco_gt, device, cfg,
                output_dir=output_dir, category_names=data.category_names, print_tables=last)
        row = epoch_row(epoch, train_stats, evaluated.loss_stats if evaluated else None,
                        evaluated.coco_stats if evaluated else None, run.n_parameters, time.monotonic() - epoch_start)
        result.history.append(row)
        run_log.write(row)
        _log_epoch(row)
        if on_epoch_end is not None:
            on_epoch_end(row)
        if out_of_time:
            log.info("time budget of %.1f min reached after epoch %d", cfg.time_budget, epoch)
            break
    result.train_seconds = time.monotonic() - train_start
    run_log.close()
    du.cleanup()
    return result


def _diverged_message(err: TrainingDiverged, output_dir: Path | None) -> str:
    """The divergence, where the last good checkpoint is, and what to try."""
    kept = output_dir / CHECKPOINT_NAME if output_dir and (output_dir / CHECKPOINT_NAME).exists() else None
    return (f"{err}. Training stopped; "
            + (f"the last good checkpoint is {kept}." if kept else "no checkpoint was written yet.")
            + " Try a lower --lr, --clip_max_norm 0.1, or --amp none.")


def _log_epoch(row: dict[str, Any]) -> None:
    """One line per epoch: time, train loss and, when evaluated, test loss, AP and AP50."""
    evaluated = ""
    if "test_loss" in row:
        ap = stats_dict(row[COCO_STATS_KEYS["bbox"]]) if COCO_STATS_KEYS["bbox"] in row else {"AP": NAN, "AP50": NAN}
        evaluated = f", test loss {row['test_loss']:.4f}, AP {ap['AP']:.3f}, AP50 {ap['AP50']:.3f}"
    log.info("epoch %d done in %.0fs: train loss %.4f%s", row["epoch"], row["epoch_time"], row["train_loss"], evaluated)
