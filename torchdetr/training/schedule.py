"""Learning-rate schedules: the original step drop (per epoch) or warm-up + step/cosine (per iteration)."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str,
    lr_drop: int,
    epochs: int,
    iters_per_epoch: int,
    warmup_iters: int = 0,
    min_lr_ratio: float = 0.01,
) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """``(scheduler, per_iteration)``.

    - ``step`` without warm-up: ``StepLR(lr_drop)`` stepped once per epoch — the original, whose
      state dict checkpoints carry.
    - otherwise a ``LambdaLR`` stepped every iteration: linear warm-up over ``warmup_iters``, then
      ×0.1 from epoch ``lr_drop`` (``step``) or a cosine decay to ``min_lr_ratio`` at the last epoch.
    """
    if schedule not in ("step", "cosine"):
        raise ConfigError(f"--lr_schedule: unknown schedule {schedule!r} (step or cosine)")
    if schedule == "step" and warmup_iters <= 0:
        return torch.optim.lr_scheduler.StepLR(optimizer, lr_drop), False
    total = max(epochs * iters_per_epoch, 1)
    drop_at = lr_drop * iters_per_epoch

    def factor(it: int) -> float:
        warm = min(1.0, (it + 1) / warmup_iters) if warmup_iters > 0 else 1.0
        if schedule == "step":
            return warm * (0.1 if it >= drop_at else 1.0)
        progress = min(1.0, max(0.0, (it - warmup_iters) / max(total - warmup_iters, 1)))
        return warm * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
