"""The weights a run starts from: frozen detector, fine-tuning weights, backbone weights, a resumed run,
or the weights to evaluate.

Order of precedence, as in the original ``main.py``: ``--frozen_weights`` (a detector under a mask
head) > ``--pretrained`` (fine-tuning; the class head is re-initialised when the class count
differs) > ``--backbone_weights`` (unless resuming); ``--resume`` then restores the whole training
state on top.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import DETRConfig
from ..errors import ConfigError, InputFileError
from ..training import ModelEMA
from .checkpoint import evaluated_weights, load_checkpoint, load_model_state, non_finite_entries, unwrap

log = logging.getLogger("torchdetr.train")

TRAINING_STATE_KEYS = ("optimizer", "lr_scheduler", "epoch")  # what a checkpoint needs to resume training


def load_start_weights(model: nn.Module, cfg: DETRConfig) -> str:
    """Frozen detection weights / fine-tuning weights / backbone weights into ``model``; returns what was done."""
    bare = unwrap(model)
    if cfg.frozen_weights:
        if not hasattr(bare, "detr"):
            raise ConfigError(f"--frozen_weights {cfg.frozen_weights}: only for segmentation training (add --masks)")
        checkpoint = load_checkpoint(cfg.frozen_weights)
        load_model_state(bare.detr, checkpoint["model"], source=cfg.frozen_weights)
        return f"detection weights from {cfg.frozen_weights} (frozen)"
    if cfg.pretrained:
        return _load_pretrained(bare, cfg.pretrained)
    if cfg.resume:
        return "resumed"
    if cfg.backbone_weights == "none":
        return "random weights (--backbone_weights none)"
    from ..models.backbone import load_backbone_weights

    backbone = bare.detr.backbone if hasattr(bare, "detr") else bare.backbone
    load_backbone_weights(backbone, cfg.backbone, cfg.backbone_weights)
    return f"backbone from {cfg.backbone_weights}"


def _load_pretrained(model: nn.Module, name_or_path: str) -> str:
    """Fine-tuning weights (an official model name or a checkpoint); a class head of another size starts afresh."""
    from ..models.zoo import OFFICIAL_MODELS

    source = OFFICIAL_MODELS[name_or_path].url if name_or_path in OFFICIAL_MODELS else name_or_path
    state = load_checkpoint(source)["model"]
    if hasattr(model, "detr") and not any(k.startswith("detr.") for k in state):
        load_model_state(model.detr, state, reinit_class_head=True, source=source)
        return f"detection weights from {source} (mask head from scratch)"
    skipped = load_model_state(model, state, reinit_class_head=True, source=source)
    if skipped:
        log.warning("fine-tuning: the class head of %s has a different number of classes; it is re-initialised", source)
    return f"weights from {source}"


@dataclass
class ResumedState:
    """What a resumed run continues with besides the weights and optimiser: the first epoch to train, the
    checkpoint's epoch (None when it held no training state), its random states (one per process) and its
    ``run_log`` (``{"rows": rows logged before its epoch, "pending": {"row", "evaluate"}}``) and the experiment
    trackers' run ids (``loggers``), when it has them."""

    start_epoch: int
    epoch: int | None = None
    rng: list[dict[str, Any]] | None = None
    run_log: dict[str, Any] | None = None
    loggers: dict[str, Any] | None = None  # the experiment trackers' run ids (engine.loggers)
    # a checkpoint written in the middle of an epoch (a stop request): {"epoch", "iteration", "losses", "train_time"}
    partial_epoch: dict[str, Any] | None = None


def resume_training(
    source: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    start_epoch: int,
    *,
    training_queries: nn.Module | None = None,
    ema: ModelEMA | None = None,
    scaler: torch.amp.GradScaler | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> ResumedState:
    """Restore a run from checkpoint ``source`` (``checkpoint``: the same, already loaded).

    The model's weights always; the optimizer, LR schedule, training-only queries and fp16 loss scale
    when the checkpoint holds a training state (else training restarts at ``start_epoch`` from these
    weights); the EMA weights when both the run and the checkpoint have them. A checkpoint holding
    non-finite values is refused (``InputFileError``).
    """
    if checkpoint is None:
        checkpoint = load_checkpoint(source)
    bad = non_finite_entries({k: checkpoint[k] for k in ("model", "ema", "optimizer") if k in checkpoint})
    if bad:
        raise InputFileError(f"--resume {source}: the checkpoint holds non-finite values ({bad[0].rstrip('/')}"
                             f"{', …' if len(bad) > 1 else ''}): resume from an earlier checkpoint")
    load_model_state(unwrap(model), checkpoint["model"], source=source)
    state = ResumedState(start_epoch=start_epoch)
    if all(k in checkpoint for k in TRAINING_STATE_KEYS):
        if training_queries is not None and "training_queries" in checkpoint:
            training_queries.load_state_dict(checkpoint["training_queries"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if scaler is not None and "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
        state = ResumedState(start_epoch=int(checkpoint["epoch"]) + 1, epoch=int(checkpoint["epoch"]),
                             rng=checkpoint.get("rng"), run_log=checkpoint.get("run_log"),
                             loggers=checkpoint.get("loggers"), partial_epoch=checkpoint.get("partial_epoch"))
        if state.partial_epoch is not None:
            log.info("resumed from %s at epoch %d, iteration %d", source, state.start_epoch,
                     state.partial_epoch["iteration"])
        else:
            log.info("resumed from %s at epoch %d", source, state.start_epoch)
    if ema is not None and "ema" in checkpoint:
        ema.load_from_checkpoint(checkpoint["ema"])
    return state


def load_weights_to_evaluate(model: nn.Module, source: str, use_ema: bool = True) -> str:
    """The weights of checkpoint ``source`` into ``model``: its EMA weights when it has them (the weights
    training evaluated, as ``load_model`` chooses) unless ``use_ema=False``; returns which were loaded."""
    state, is_ema = evaluated_weights(load_checkpoint(source), use_ema)
    load_model_state(unwrap(model), state, source=source)
    return f"{'EMA weights' if is_ema else 'weights'} of {source}"
