"""Exponential moving average of model weights, evaluated and saved alongside the model."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA(nn.Module):
    """``ema = d·ema + (1−d)·model`` after every optimizer step, with a warm-up of the decay.

    ``d = decay · (1 − exp(−updates / warmup))`` so early averages are not dominated by the random
    initialisation. Buffers (BatchNorm statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: int = 1000) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema_decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self._param_names = {name for name, _ in self.module.named_parameters()}

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if value.dtype.is_floating_point and name in self._param_names:
                target.mul_(d).add_(value.detach(), alpha=1 - d)
            else:
                target.copy_(value)

    def state_dict_for_checkpoint(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_from_checkpoint(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state.get("updates", 0))
