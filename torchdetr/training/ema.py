"""Exponential moving average of model weights, evaluated and saved alongside the model.

Built on ``torch.optim.swa_utils.AveragedModel`` (a deep copy of the model, its parameters averaged,
its buffers copied) with a warm-up of the decay as the averaging rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from ..errors import ConfigError

DEFAULT_DECAY = 0.9998
DEFAULT_WARMUP = 1000  # updates; the decay reaches 63 % of its value after this many


def warmup_decay(decay: float, warmup: float, updates: int) -> float:
    """``decay · (1 − exp(−updates / warmup))``: small at first, so the random start fades out quickly."""
    return decay * (1 - math.exp(-updates / warmup))


def warmup_ema_multi_avg_fn(decay: float, warmup: float) -> Callable[[Sequence[Tensor], Sequence[Tensor], Tensor], None]:
    """``AveragedModel``'s ``multi_avg_fn``: ``ema = d·ema + (1−d)·model`` in place, ``d = warmup_decay(updates)``.

    ``AveragedModel`` passes the number of models averaged so far; ``ModelEMA`` counts its initial copy
    as the first one, so at the k-th update that number is k.
    """

    def average(ema_params: Sequence[Tensor], model_params: Sequence[Tensor], num_averaged: Tensor | int) -> None:
        d = warmup_decay(decay, warmup, int(num_averaged))
        for ema, current in zip(ema_params, model_params, strict=True):
            ema.mul_(d).add_(current, alpha=1 - d)

    return average


class ModelEMA(AveragedModel):
    """``ema = d·ema + (1−d)·model`` after every optimizer step, with a warm-up of the decay.

    ``d = decay · (1 − exp(−updates / warmup))`` so early averages are not dominated by the random
    initialisation. Buffers (BatchNorm statistics) are copied, not averaged. ``module`` is the averaged
    model (evaluated and saved); checkpoints hold ``{"model": state dict, "updates", "decay"}``.
    """

    def __init__(self, model: nn.Module, decay: float = DEFAULT_DECAY, warmup: float = DEFAULT_WARMUP) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"--ema_decay must be in (0, 1), got {decay}")
        device = next(model.parameters()).device
        super().__init__(model, device=device, multi_avg_fn=warmup_ema_multi_avg_fn(decay, warmup), use_buffers=False)
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.n_averaged.fill_(1)  # the copy made here is the first average: no copy on the first update

    @property
    def updates(self) -> int:
        """Optimizer steps averaged so far."""
        return int(self.n_averaged) - 1

    def current_decay(self) -> float:
        """The decay that the last update used."""
        return warmup_decay(self.decay, self.warmup, self.updates)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current weights in (call after every optimizer step)."""
        self.update_parameters(model)

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_from_checkpoint(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.n_averaged.fill_(int(state.get("updates", 0)) + 1)
