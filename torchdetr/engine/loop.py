"""One training epoch (the original ``engine.train_one_epoch``) and the running means it logs."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..config import DETRConfig
from ..losses.set_criterion import SetCriterion
from ..training import ModelEMA, TrainingModel
from . import distributed as du
from .checkpoint import unwrap
from .runtime import autocast_context, progress, to_device, to_float
from .stop import StopRequest, StopRequested

log = logging.getLogger("torchdetr.train")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def losses_to_host(total: Tensor, loss_dict: Mapping[str, Tensor]) -> tuple[float, dict[str, float]]:
    """``(total, {name: value})`` as Python numbers from ONE device → host copy (a training step waits for
    the device once, before its backward). ``total`` and the entries of ``loss_dict`` are scalar tensors; they
    are stacked in their common dtype (float32, or wider when one is wider: every value stays exact), never
    converted to float64 on the device, which MPS does not have."""
    numbers = torch.stack([t.detach().reshape(()) for t in (total, *loss_dict.values())]).tolist()
    return numbers[0], dict(zip(loss_dict, numbers[1:]))


class LossAverager:
    """Running means of the criterion's entries, logged as the original does.

    ``loss`` is the weighted total, ``loss_ce`` etc. are weighted, ``loss_ce_unscaled`` raw,
    ``class_error`` raw.
    """

    def __init__(self, weight_dict: dict[str, float]) -> None:
        self.weight_dict = weight_dict
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0

    def update(self, values: Mapping[str, float], total: float) -> dict[str, float]:
        """Add one iteration (``values``: the criterion's entries as numbers, :func:`losses_to_host`; ``total``
        their weighted sum); returns its row."""
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
        """The mean of every entry over the iterations so far, of all processes under ``torchrun`` (their sums
        and counts gathered: processes may have done different numbers of iterations, or none)."""
        sums: dict[str, float] = defaultdict(float)
        count = 0
        for part_sums, part_count in du.gather_objects((dict(self.sums), self.count)):
            for k, v in part_sums.items():
                sums[k] += v
            count += part_count
        return {k: v / max(count, 1) for k, v in sums.items()}

    def state_dict(self) -> dict[str, Any]:
        """The sums and count so far (a checkpoint written in the middle of an epoch carries them)."""
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = defaultdict(float, state["sums"])
        self.count = int(state["count"])


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
    stop: StopRequest | None = None,
    start_iteration: int = 0,
    averager: LossAverager | None = None,
) -> tuple[dict[str, float], int]:
    """One pass over ``data_loader``; returns (averaged log values, iterations done).

    ``model`` is the DETR model, or a ``TrainingModel`` (training-only queries) whose outputs
    go to a ``TrainingCriterion``. ``lr_scheduler`` (when given) is stepped every iteration,
    ``ema`` updated after every optimizer step. Stops early (returning what was done) when
    ``time.monotonic()`` passes ``deadline``. Raises ``TrainingDiverged`` on a non-finite loss.

    ``stop``: when any process's request is set (checked after every step, agreed through the loss's
    all-reduce), raises :class:`~torchdetr.engine.stop.StopRequested` at that step boundary. An epoch
    continued from a checkpoint written there passes the steps already done (``start_iteration``; the
    loader skips them) and their loss sums (``averager``).
    """
    with_training_queries = isinstance(unwrap(model), TrainingModel)
    model.train()
    criterion.train()
    averager = averager if averager is not None else LossAverager(criterion.weight_dict)
    total = len(data_loader) if hasattr(data_loader, "__len__") else None
    bar = progress(data_loader, desc=f"epoch {epoch}", total=total, initial=start_iteration)
    iterations = 0
    start = time.monotonic()
    for samples, targets in bar:
        samples, targets = to_device(samples, targets, device, cfg.channels_last_training)
        try:
            with autocast_context(device, cfg.amp):
                predictions = model(samples, targets) if with_training_queries else model(samples)
            predictions = to_float(predictions)  # losses and matching always in float32
            loss_dict = criterion(predictions, targets)
            losses = criterion.weighted_total(loss_dict)
        except FloatingPointError as err:  # the matcher refuses non-finite predictions
            raise TrainingDiverged(f"{err} at epoch {epoch}, iteration {iterations}") from None
        local_total, values = losses_to_host(losses, loss_dict)
        loss_value, stop_agreed = _mean_over_processes(local_total, stop is not None and stop.requested, device)
        if not math.isfinite(loss_value):
            details = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise TrainingDiverged(f"loss is {loss_value} at epoch {epoch}, iteration {iterations} ({details})")

        _optimizer_step(losses, model, optimizer, scaler, cfg.clip_max_norm)
        if lr_scheduler is not None:
            lr_scheduler.step()
        if ema is not None:
            ema.update(unwrap(model).detr if with_training_queries else unwrap(model))

        row = averager.update(values, loss_value)
        iterations += 1
        if on_step is not None:
            on_step(iterations)
        if not bar.disable:
            bar.set_postfix(loss=f"{row['loss']:.3f}", class_err=f"{row.get('class_error', float('nan')):.1f}")
        elif du.is_main_process() and cfg.print_freq > 0 and (start_iteration + iterations) % cfg.print_freq == 0:
            _log_progress(epoch, iterations, start_iteration, total, row, time.monotonic() - start)
        if stop_agreed:
            bar.close()
            raise StopRequested((stop.reason if stop is not None else None) or "a stop request of another process",
                                start_iteration + iterations, averager)
        if deadline is not None and time.monotonic() >= deadline:
            break
    bar.close()
    stats = averager.means(device)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats, iterations


def _mean_over_processes(value: float, stop: bool, device: torch.device) -> tuple[float, bool]:
    """``(value averaged over the processes of a torchrun job, whether any process asked to stop)``; in a
    single process ``(value, stop)``. One all-reduce carries both."""
    if not du.is_dist():
        return value, stop
    summed = torch.tensor([value, float(stop)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(summed)
    return float(summed[0]) / du.get_world_size(), bool(summed[1] > 0)


def _optimizer_step(losses: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, clip_max_norm: float) -> None:
    """Backward, gradient clipping at ``clip_max_norm`` (0: none), optimizer step; through ``scaler`` for fp16."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(losses).backward()
        if clip_max_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
        scaler.step(optimizer)
        scaler.update()
        return
    losses.backward()
    if clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
    optimizer.step()


def _log_progress(epoch: int, iterations: int, start_iteration: int, total: int | None, row: dict[str, float],
                  seconds: float) -> None:
    """A plain progress line (when no progress bar is shown): loss, class error, speed and ETA."""
    rate = iterations / seconds
    done = start_iteration + iterations
    eta = f", eta {(total - done) / rate:.0f}s" if total else ""
    log.info("epoch %d [%d/%s] loss %.4f class_error %.2f (%.2f it/s%s)", epoch, done,
             total if total is not None else "?", row["loss"], row.get("class_error", float("nan")), rate, eta)
