"""Training checkpoints in the official DETR layout: model, optimizer, lr_scheduler, epoch, args."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DETRConfig

CHECKPOINT_NAME = "checkpoint.pth"
EXTRA_CHECKPOINT_EVERY = 100  # epochs, as the original (plus one at the LR drop)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (keys never start with ``module.``)."""
    return model.module if hasattr(model, "module") else model


def checkpoint_dict(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Any | None,
    epoch: int,
    cfg: DETRConfig,
    **extra: Any,
) -> dict[str, Any]:
    """``{"model", "optimizer", "lr_scheduler", "epoch", "args", ...extra}`` as ``main.py`` writes it.

    ``args`` is an ``argparse.Namespace`` (the original's type, so its code can read our files);
    extra entries (``categories``, ``ema``) are ignored by the original's loaders.
    """
    state: dict[str, Any] = {"model": unwrap(model).state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if lr_scheduler is not None:
        state["lr_scheduler"] = lr_scheduler.state_dict()
    state["epoch"] = epoch
    state["args"] = argparse.Namespace(**cfg.to_dict())
    state.update(extra)
    return state


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file then rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def checkpoint_paths(output_dir: Path, epoch: int, lr_drop: int) -> list[Path]:
    """``checkpoint.pth`` always, plus ``checkpointNNNN.pth`` before the LR drop and every 100 epochs."""
    paths = [output_dir / CHECKPOINT_NAME]
    if (epoch + 1) % lr_drop == 0 or (epoch + 1) % EXTRA_CHECKPOINT_EVERY == 0:
        paths.append(output_dir / f"checkpoint{epoch:04}.pth")
    return paths
