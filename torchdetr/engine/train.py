"""The training loop: one plain function per step, as ``main.py`` + ``engine.py`` of the original.

``train(cfg)`` builds everything from a ``DETRConfig``, trains for ``cfg.epochs`` (or until
``cfg.time_budget`` minutes), evaluates with COCO AP, and writes the original's files to
``cfg.output_dir``: ``checkpoint.pth`` (+ ``checkpointNNNN.pth``), ``log.txt`` (JSON lines),
``eval/latest.pth`` and TensorBoard scalars.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler
from tqdm import tqdm

from ..config import DETRConfig
from ..losses.build import build_model
from ..losses.set_criterion import SetCriterion
from ..structures import collate_fn
from ..training import ModelEMA, TrainingModel, build_lr_scheduler, build_training_model
from . import distributed as du
from .checkpoint import checkpoint_dict, checkpoint_paths, load_checkpoint, load_model_state, save_atomic, unwrap
from .evaluate import EvalResult, evaluate
from .runtime import resolve_device

log = logging.getLogger("torchdetr.train")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


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


# ---------------------------------------------------------------------------------------------
# set-up helpers
# ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _seed_worker(worker_id: int) -> None:
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def parameter_groups(model: nn.Module, cfg: DETRConfig) -> list[dict[str, Any]]:
    """Two AdamW groups as the original: non-backbone at ``lr``, backbone at ``lr_backbone``."""
    named = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if "backbone" not in n], "lr": cfg.lr},
        {"params": [p for n, p in named if "backbone" in n], "lr": cfg.lr_backbone},
    ]


def build_optimizer(model: nn.Module, cfg: DETRConfig, iters_per_epoch: int = 1) -> tuple[torch.optim.Optimizer, Any, bool]:
    """AdamW and its LR schedule: ``(optimizer, lr_scheduler, step_every_iteration)``."""
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler, per_iteration = build_lr_scheduler(
        optimizer, schedule=cfg.lr_schedule, lr_drop=cfg.lr_drop, epochs=cfg.epochs, iters_per_epoch=iters_per_epoch,
        warmup_iters=cfg.warmup_iters, min_lr_ratio=cfg.min_lr_ratio,
    )
    return optimizer, lr_scheduler, per_iteration


def autocast_context(device: torch.device, amp: str):
    """``torch.autocast`` for bf16/fp16, or a no-op."""
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_float(obj: Any) -> Any:
    """Floating tensors in nested dicts/lists/tuples → float32 (model outputs under autocast)."""
    if torch.is_tensor(obj):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_float(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_float(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: to_float(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj


def make_loaders(dataset_train: Dataset | None, dataset_val: Dataset, cfg: DETRConfig) -> tuple[DataLoader | None, DataLoader]:
    """Train loader (shuffled, drop_last) and val loader (sequential), distributed-aware."""
    generator = torch.Generator()
    generator.manual_seed(cfg.seed + du.get_rank())
    common = dict(collate_fn=collate_fn, num_workers=cfg.num_workers, worker_init_fn=_seed_worker,
                  persistent_workers=cfg.num_workers > 0)
    loader_train = None
    if dataset_train is not None:
        if du.is_dist():
            sampler_train = DistributedSampler(dataset_train, seed=cfg.seed)
        else:
            sampler_train = RandomSampler(dataset_train, generator=generator)
        drop_last = len(dataset_train) >= cfg.batch_size
        batch_sampler = torch.utils.data.BatchSampler(sampler_train, cfg.batch_size, drop_last=drop_last)
        loader_train = DataLoader(dataset_train, batch_sampler=batch_sampler, generator=generator, **common)
    sampler_val = DistributedSampler(dataset_val, shuffle=False) if du.is_dist() else SequentialSampler(dataset_val)
    loader_val = DataLoader(dataset_val, batch_size=cfg.batch_size, sampler=sampler_val, drop_last=False, **common)
    return loader_train, loader_val


class LossAverager:
    """Running means of the criterion's entries, logged as the original does.

    ``loss`` is the weighted total, ``loss_ce`` etc. are weighted, ``loss_ce_unscaled`` raw,
    ``class_error`` raw.
    """

    def __init__(self, weight_dict: dict[str, float]) -> None:
        self.weight_dict = weight_dict
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0

    def update(self, loss_dict: dict[str, torch.Tensor], total: float) -> dict[str, float]:
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        row = {"loss": total}
        row.update({k: v * self.weight_dict[k] for k, v in values.items() if k in self.weight_dict})
        row.update({f"{k}_unscaled": v for k, v in values.items()})
        if "class_error" in values:
            row["class_error"] = values["class_error"]
        for k, v in row.items():
            self.sums[k] += v
        self.count += 1
        return row

    def means(self, device: torch.device) -> dict[str, float]:
        local = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        return du.all_reduce_mean(local, device)


def _to_device(samples, targets, device: torch.device, channels_last: bool = False):
    samples = samples.to(device, non_blocking=True)
    if channels_last:
        samples.tensors = samples.tensors.contiguous(memory_format=torch.channels_last)
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return samples, targets


def _is_interactive() -> bool:
    return sys.stderr.isatty()


# ---------------------------------------------------------------------------------------------
# one epoch
# ---------------------------------------------------------------------------------------------
def train_one_epoch(
    model: nn.Module,
    criterion: SetCriterion,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    cfg: DETRConfig,
    scaler: torch.amp.GradScaler | None = None,
    deadline: float | None = None,
    on_step: Callable[[int], None] | None = None,
    lr_scheduler: Any | None = None,
    ema: ModelEMA | None = None,
) -> tuple[dict[str, float], int]:
    """One pass over ``data_loader``; returns (averaged log values, iterations done).

    ``model`` is the DETR model, or a ``TrainingModel`` (training-only queries) whose outputs
    go to a ``TrainingCriterion``. ``lr_scheduler`` (when given) is stepped every iteration,
    ``ema`` updated after every optimizer step. Stops early (returning what was done) when
    ``time.monotonic()`` passes ``deadline``. Raises ``TrainingDiverged`` on a non-finite loss.
    """
    with_training_queries = isinstance(unwrap(model), TrainingModel)
    model.train()
    criterion.train()
    averager = LossAverager(criterion.weight_dict)
    total = len(data_loader) if hasattr(data_loader, "__len__") else None
    bar = tqdm(data_loader, total=total, desc=f"epoch {epoch}", disable=not _is_interactive() or not du.is_main_process(),
               dynamic_ncols=True, leave=False)
    iterations = 0
    start = time.monotonic()
    for samples, targets in bar:
        samples, targets = _to_device(samples, targets, device, cfg.channels_last)
        try:
            with autocast_context(device, cfg.amp):
                predictions = model(samples, targets) if with_training_queries else model(samples)
            predictions = to_float(predictions)  # losses and matching always in float32
            loss_dict = criterion(predictions, targets)
            losses = criterion.weighted_total(loss_dict)
        except FloatingPointError as err:  # the matcher refuses non-finite predictions
            raise TrainingDiverged(f"{err} at epoch {epoch}, iteration {iterations}") from None
        loss_value = float(losses.detach())
        if du.is_dist():
            flag = torch.tensor([loss_value], device=device)
            torch.distributed.all_reduce(flag)
            loss_value = float(flag) / du.get_world_size()
        if not math.isfinite(loss_value):
            details = ", ".join(f"{k}={float(v):.4g}" for k, v in loss_dict.items())
            raise TrainingDiverged(f"loss is {loss_value} at epoch {epoch}, iteration {iterations} ({details})")

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(losses).backward()
            if cfg.clip_max_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_max_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            if cfg.clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_max_norm)
            optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        if ema is not None:
            ema.update(unwrap(model).detr if with_training_queries else unwrap(model))

        row = averager.update(loss_dict, loss_value)
        iterations += 1
        if on_step is not None:
            on_step(iterations)
        if bar.disable:
            if du.is_main_process() and cfg.print_freq > 0 and iterations % cfg.print_freq == 0:
                rate = iterations / (time.monotonic() - start)
                eta = f", eta {((total or iterations) - iterations) / rate:.0f}s" if total else ""
                log.info("epoch %d [%d/%s] loss %.4f class_error %.2f (%.2f it/s%s)", epoch, iterations,
                         total if total is not None else "?", row["loss"], row.get("class_error", float("nan")), rate, eta)
        else:
            bar.set_postfix(loss=f"{row['loss']:.3f}", class_err=f"{row.get('class_error', float('nan')):.1f}")
        if deadline is not None and time.monotonic() >= deadline:
            break
    bar.close()
    stats = averager.means(device)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats, iterations


# ---------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------
def _load_start_weights(model: nn.Module, cfg: DETRConfig) -> str:
    """Frozen detection weights / fine-tuning weights / backbone weights; returns what was done."""
    bare = unwrap(model)
    if cfg.frozen_weights:
        if not hasattr(bare, "detr"):
            raise ValueError("--frozen_weights is only for segmentation training (--masks)")
        checkpoint = load_checkpoint(cfg.frozen_weights)
        load_model_state(bare.detr, checkpoint["model"], source=cfg.frozen_weights)
        return f"detection weights from {cfg.frozen_weights} (frozen)"
    if cfg.pretrained:
        from ..models.zoo import OFFICIAL_MODELS

        source = OFFICIAL_MODELS[cfg.pretrained].url if cfg.pretrained in OFFICIAL_MODELS else cfg.pretrained
        checkpoint = load_checkpoint(source)
        state = checkpoint["model"]
        if hasattr(bare, "detr") and not any(k.startswith("detr.") for k in state):
            load_model_state(bare.detr, state, reinit_class_head=True, source=source)
            return f"detection weights from {source} (mask head from scratch)"
        skipped = load_model_state(bare, state, reinit_class_head=True, source=source)
        if skipped:
            log.warning("fine-tuning: the class head of %s has a different number of classes; it is re-initialised", source)
        return f"weights from {source}"
    if cfg.resume:
        return "resumed"
    if cfg.backbone_weights == "none":
        return "random weights (--backbone_weights none)"
    from ..models.backbone import load_backbone_weights

    backbone = bare.detr.backbone if hasattr(bare, "detr") else bare.backbone
    load_backbone_weights(backbone, cfg.backbone, cfg.backbone_weights)
    return f"backbone from {cfg.backbone_weights}"


def _write_log(output_dir: Path | None, row: dict[str, Any], writer: Any) -> None:
    if output_dir is None or not du.is_main_process():
        return
    with (output_dir / "log.txt").open("a") as f:
        f.write(json.dumps(row) + "\n")
    if writer is not None:
        epoch = row["epoch"]
        for k, v in row.items():
            if isinstance(v, int | float) and k not in ("epoch", "n_parameters"):
                writer.add_scalar(k.replace("train_", "train/").replace("test_", "test/"), v, epoch)
        stats = row.get("test_coco_eval_bbox")
        if stats:
            writer.add_scalar("test/AP", stats[0], epoch)
            writer.add_scalar("test/AP50", stats[1], epoch)
        writer.flush()


def _tensorboard(output_dir: Path | None):
    if output_dir is None or not du.is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a declared dependency, but stay usable without it
        log.warning("tensorboard is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))


def train(
    cfg: DETRConfig,
    *,
    datasets: tuple[Dataset | None, Dataset] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train (or only evaluate, with ``cfg.eval``) as ``python main.py`` of the original.

    ``datasets`` (train, val) overrides building them from ``cfg`` (used by tests and benchmarks).
    ``cfg.num_classes`` of ``None`` means: infer it from the data (max category id + 1).
    """
    from ..data.build import build_dataset, get_coco_api

    device = resolve_device(cfg.device)
    info = du.init_distributed(str(device), cfg.dist_url)
    if info.distributed and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    seed_everything(cfg.seed + info.rank)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else None
    if output_dir is not None and du.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)

    if datasets is None:
        if cfg.dataset_file == "coco" and not cfg.skip_data_check:
            check_training_data(cfg)
        dataset_val = build_dataset("val", cfg)
        dataset_train = None if cfg.eval else build_dataset("train", cfg)
    else:
        dataset_train, dataset_val = datasets
    base_ds = get_coco_api(dataset_val)
    cfg = _resolve_num_classes(cfg, base_ds)
    category_names = {int(c["id"]): str(c["name"]) for c in base_ds.loadCats(base_ds.getCatIds())}

    model, criterion, postprocessors = build_model(cfg)
    start = _load_start_weights(model, cfg)
    model.to(device)
    criterion.to(device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model: %s backbone (%s norm), %d+%d layers, hidden %d, %d queries, %d classes; %s parameters to train; "
             "start: %s", cfg.backbone, cfg.resolved_backbone_norm, cfg.enc_layers, cfg.dec_layers, cfg.hidden_dim,
             cfg.num_queries, cfg.num_classes, f"{n_parameters:,}", start)

    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    model_without_ddp = model
    training = build_training_model(model, criterion, cfg)
    train_module, train_criterion = training if training is not None else (model, criterion)
    train_module.to(device)
    if training is not None:
        log.info("training-only queries: %d query group(s), %d denoising group(s) (inference uses the plain model)",
                 cfg.num_groups, cfg.dn_groups)
    loader_train, loader_val = make_loaders(dataset_train, dataset_val, cfg)
    iters_per_epoch = len(loader_train) if loader_train is not None else 1
    optimizer, lr_scheduler, per_iteration = build_optimizer(train_module, cfg, iters_per_epoch)
    if info.distributed:
        train_module = nn.parallel.DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == "cuda" else None)
        if training is None:
            model = train_module
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    ema = ModelEMA(model_without_ddp, decay=cfg.ema_decay) if cfg.ema else None

    start_epoch = cfg.start_epoch
    if cfg.resume:
        checkpoint = load_checkpoint(cfg.resume)
        load_model_state(model_without_ddp, checkpoint["model"], source=cfg.resume)
        if not cfg.eval and all(k in checkpoint for k in ("optimizer", "lr_scheduler", "epoch")):
            if training is not None and "training_queries" in checkpoint:
                training[0].queries.load_state_dict(checkpoint["training_queries"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
            start_epoch = int(checkpoint["epoch"]) + 1
            log.info("resumed from %s at epoch %d", cfg.resume, start_epoch)
        if ema is not None and "ema" in checkpoint:
            ema.load_from_checkpoint(checkpoint["ema"])

    result = TrainResult(model=model_without_ddp, config=cfg, output_dir=output_dir)
    eval_model = ema.module if ema is not None else model
    if cfg.eval:
        result.eval = evaluate(model, criterion, postprocessors, loader_val, base_ds, device, cfg,
                               output_dir=output_dir, category_names=category_names)
        du.cleanup()
        return result

    if loader_train is None or len(loader_train) == 0:
        raise ValueError("the training set is empty: nothing to train on")
    writer = _tensorboard(output_dir)
    deadline = time.monotonic() + cfg.time_budget * 60 if cfg.time_budget > 0 else None
    train_start = time.monotonic()
    log.info("training %d epochs from epoch %d: %d images, %d iterations per epoch (batch %d)", cfg.epochs,
             start_epoch, len(dataset_train), len(loader_train), cfg.batch_size)
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        if info.distributed and isinstance(loader_train.batch_sampler.sampler, DistributedSampler):
            loader_train.batch_sampler.sampler.set_epoch(epoch)
        epoch_start = time.monotonic()
        try:
            train_stats, iterations = train_one_epoch(
                train_module, train_criterion, loader_train, optimizer, device, epoch, cfg, scaler=scaler,
                deadline=deadline, lr_scheduler=lr_scheduler if per_iteration else None, ema=ema)
        except TrainingDiverged as err:
            kept = output_dir / "checkpoint.pth" if output_dir and (output_dir / "checkpoint.pth").exists() else None
            raise TrainingDiverged(f"{err}. Training stopped; "
                                   + (f"the last good checkpoint is {kept}." if kept else "no checkpoint was written yet.")
                                   + " Try a lower --lr, --clip_max_norm 0.1, or --amp none.") from None
        result.iterations += iterations
        if not per_iteration:
            lr_scheduler.step()
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if output_dir is not None and du.is_main_process():
            extra: dict[str, Any] = {"categories": category_names}
            if training is not None:
                extra["training_queries"] = training[0].queries.state_dict()
            if ema is not None:
                extra["ema"] = ema.state_dict_for_checkpoint()
            state = checkpoint_dict(model_without_ddp, optimizer, lr_scheduler, epoch, cfg, **extra)
            for path in checkpoint_paths(output_dir, epoch, cfg.lr_drop):
                save_atomic(state, path)
        row: dict[str, Any] = {f"train_{k}": v for k, v in train_stats.items()}
        last = epoch == cfg.epochs - 1 or out_of_time
        if (epoch + 1) % max(cfg.eval_every, 1) == 0 or last:
            result.eval = evaluate(eval_model, criterion, postprocessors, loader_val, base_ds, device, cfg,
                                   output_dir=output_dir, category_names=category_names, print_tables=last)
            row.update({f"test_{k}": v for k, v in result.eval.loss_stats.items()})
            if result.eval.coco_stats.get("bbox") is not None:
                row["test_coco_eval_bbox"] = result.eval.coco_stats["bbox"]
            if result.eval.coco_stats.get("segm") is not None:
                row["test_coco_eval_masks"] = result.eval.coco_stats["segm"]
        row.update({"epoch": epoch, "n_parameters": n_parameters, "epoch_time": time.monotonic() - epoch_start})
        result.history.append(row)
        _write_log(output_dir, row, writer)
        ap = row.get("test_coco_eval_bbox", [float("nan")] * 2)
        log.info("epoch %d done in %.0fs: train loss %.4f%s", epoch, row["epoch_time"], row["train_loss"],
                 f", test loss {row['test_loss']:.4f}, AP {ap[0]:.3f}, AP50 {ap[1]:.3f}" if "test_loss" in row else "")
        if on_epoch_end is not None:
            on_epoch_end(row)
        if out_of_time:
            log.info("time budget of %.1f min reached after epoch %d", cfg.time_budget, epoch)
            break
    result.train_seconds = time.monotonic() - train_start
    if writer is not None:
        writer.close()
    du.cleanup()
    return result


MAX_IMAGES_TO_CHECK = 20_000  # start-up data check opens image headers only below this many files


class DataCheckFailed(ValueError):
    """The dataset has problems that would make training crash or silently wrong."""


def check_training_data(cfg: DETRConfig) -> None:
    """Run ``detr data check`` on the splits about to be used; raise ``DataCheckFailed`` with the report."""
    from ..data.check import check_dataset
    from ..data.coco import resolve_coco_layout

    if not cfg.coco_path:
        raise ValueError("--coco_path is required with --dataset_file coco (a COCO-format dataset folder)")
    splits = ("val",) if cfg.eval else ("train", "val")
    for split in splits:
        images_dir, ann_file = resolve_coco_layout(cfg.coco_path, split)
        # reading every image header of a huge dataset (COCO: 118k) at each start is too slow
        read_images = sum(1 for _ in zip(images_dir.iterdir(), range(MAX_IMAGES_TO_CHECK + 1))) <= MAX_IMAGES_TO_CHECK
        if not read_images:
            log.info("data check of %s: more than %d images, image files not opened (run `detr data check`)",
                     ann_file, MAX_IMAGES_TO_CHECK)
        report = check_dataset(ann_file, images_dir, check_images=read_images)
        if not report.ok:
            raise DataCheckFailed(f"{ann_file}: the {split} data has problems; fix them or pass --skip_data_check:\n"
                                  + report.format())
        if report.warnings:
            log.warning("%s: %d warning(s) from the data check (run `detr data check %s` for details)",
                        ann_file, len(report.warnings), cfg.coco_path)


def _resolve_num_classes(cfg: DETRConfig, coco) -> DETRConfig:
    """Fill ``num_classes`` from the data when ``None``; refuse a class head too small for the ids."""
    cat_ids = coco.getCatIds()
    implied = (max(cat_ids) + 1) if cat_ids else 1
    if cfg.num_classes is None:
        log.info("num_classes = %d (max category id %d + 1, from the annotations)", implied, implied - 1)
        return cfg.replace(num_classes=implied)
    if cfg.num_classes < implied:
        raise ValueError(f"--num_classes {cfg.num_classes} is too small: the dataset has category id {implied - 1}, "
                         f"so num_classes must be at least {implied} (max id + 1); omit --num_classes to infer it")
    return cfg
