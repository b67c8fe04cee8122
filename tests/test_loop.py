"""The training epoch's hot path: one device → host copy of the losses per step."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from torchdetr import DETRConfig, build_model
from torchdetr.data.build import build_dataset
from torchdetr.engine import loop
from torchdetr.engine.optim import build_optimizer
from torchdetr.structures import collate_fn

from .test_train import TINY

HOST_READS = ("item", "tolist", "__float__")  # the Tensor methods that copy to the host (and wait for the device)


def test_losses_to_host_gives_every_entry_exactly():
    loss_dict = {"loss_ce": torch.tensor(0.1234567, dtype=torch.float32), "class_error": torch.tensor(12.5),
                 "loss_bbox": torch.tensor([3.0e-8])}
    total = loss_dict["loss_ce"] * 2 + loss_dict["loss_bbox"].reshape(())
    host_total, values = loop.losses_to_host(total, loss_dict)
    assert host_total == float(total)
    assert values == {k: float(v) for k, v in loss_dict.items()}


class NoFloat64(torch.overrides.TorchFunctionMode):
    """A device without float64 (MPS): any operation that makes a float64 tensor fails, as it does there."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor) and result.dtype == torch.float64:
            raise TypeError(f"{func.__name__}: float64 is not supported on this device")
        return result


def test_losses_to_host_needs_no_float64_on_the_device():
    """MPS has no float64: the host copy must not convert the losses to it (bfloat16 entries under AMP too)."""
    loss_dict = {"loss_ce": torch.tensor(0.1234567), "loss_bbox": torch.tensor(0.3, dtype=torch.bfloat16)}
    total = loss_dict["loss_ce"] + loss_dict["loss_bbox"].float()
    with NoFloat64():
        host_total, values = loop.losses_to_host(total, loss_dict)
    assert host_total == float(total)
    assert values == {k: float(v) for k, v in loss_dict.items()}


def test_a_training_step_reads_the_losses_from_the_device_once(monkeypatch):
    """The loss total (finiteness check) and the logged entries come from one copy, before the backward; a
    second read after the optimizer step would make the host wait for the backward before queueing the next batch."""
    cfg = DETRConfig(**TINY, num_classes=6, dropout=0.0)
    data = build_dataset("val", cfg)
    batches = [collate_fn([data[i] for i in range(start, start + 4)]) for start in (0, 4)]
    torch.manual_seed(0)
    model, criterion, _ = build_model(cfg)
    optimizer, _, _ = build_optimizer(model, cfg)
    loop_file = Path(inspect.getfile(loop)).resolve()
    reads = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = Path(inspect.stack(context=0)[1].filename).resolve()
            if caller == loop_file:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    stats, iterations = loop.train_one_epoch(model, criterion, batches, optimizer, torch.device("cpu"), 0, cfg)
    assert iterations == len(batches)
    assert len(reads) == len(batches), reads
    assert "loss_ce" in stats and "class_error" in stats
