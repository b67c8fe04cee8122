"""What the optimizer updates and how fast: AdamW with the original's two parameter groups, and its LR schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import DETRConfig
from ..training import build_lr_scheduler
from .checkpoint import unwrap

BACKBONE_PARAMETER = "backbone"  # parameters whose name contains this learn at ``lr_backbone``


def parameter_groups(model: nn.Module, cfg: DETRConfig) -> list[dict[str, Any]]:
    """Two AdamW groups as the original: non-backbone at ``cfg.lr``, backbone at ``cfg.lr_backbone`` (trainable only)."""
    named = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if BACKBONE_PARAMETER not in n], "lr": cfg.lr},
        {"params": [p for n, p in named if BACKBONE_PARAMETER in n], "lr": cfg.lr_backbone},
    ]


def build_optimizer(model: nn.Module, cfg: DETRConfig, iters_per_epoch: int = 1) -> tuple[torch.optim.Optimizer, Any, bool]:
    """AdamW and its LR schedule: ``(optimizer, lr_scheduler, step_every_iteration)``.

    ``step_every_iteration`` is False for the original step schedule (``StepLR``, stepped after each
    epoch) and True with warm-up or cosine decay (stepped after each optimizer step).
    """
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler, per_iteration = build_lr_scheduler(
        optimizer, schedule=cfg.lr_schedule, lr_drop=cfg.lr_drop, epochs=cfg.epochs, iters_per_epoch=iters_per_epoch,
        warmup_iters=cfg.warmup_iters, min_lr_ratio=cfg.min_lr_ratio,
    )
    return optimizer, lr_scheduler, per_iteration
