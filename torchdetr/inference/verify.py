"""One check of an exported model: its outputs against the eager model's, on inputs it was not exported with.

``verify_export`` runs the exported file (``inference.runtimes``) and the eager model (eval mode,
no gradients) on the same padded batches and reports the max absolute difference of every output.
The export passes when ``pred_logits`` and ``pred_boxes`` differ by at most ``TOLERANCE`` (1e-4):
far above float32 rounding between kernels (about 1e-6 for DETR) and far below any change of
weights or graph that matters. ``pred_masks`` are reported, not judged (mask logits are large
numbers whose rounding differs more).

The default inputs (``check_batches``) have other sizes than the export sample: for dynamic
exports one image of about 3/4 of the sample, then two images of different sizes padded into one
batch (so a size or the padding frozen into the graph shows up); for static exports one image of
the sample's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import InputFileError
from ..structures import NestedTensor, as_nested_tensor, nested_tensor_from_tensor_list
from .export_contract import BOX_OUTPUTS, DEFAULT_SAMPLE_SIZE, TOLERANCE, check_sample_size
from .runtimes import ExportedRunner, Samples, load_exported

CHECK_SEED = 1  # the check images are random, but the same at every export


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run a block with ``model`` in eval mode, then restore every submodule's own mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_batches(
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    *,
    dynamic: bool = True,
    device: torch.device | str = "cpu",
    seed: int = CHECK_SEED,
) -> list[NestedTensor]:
    """The default inputs of ``verify_export`` (see the module docstring), random normal pixels."""
    h, w = check_sample_size(sample_size)
    generator = torch.Generator().manual_seed(seed)

    def image(height: int, width: int) -> Tensor:
        return torch.randn(3, height, width, generator=generator)

    if not dynamic:
        sizes = [[(h, w)]]
    else:
        sizes = [[(h * 3 // 4 + 1, w * 3 // 4 + 3)], [(h // 2 + 7, w * 3 // 4 + 1), (h * 3 // 4 + 5, w // 2 + 3)]]
    return [nested_tensor_from_tensor_list([image(*size) for size in batch]).to(device) for batch in sizes]


@dataclass(frozen=True)
class ExportCheck:
    """Result of ``verify_export``: ``differences`` maps each output name to max |exported − eager|."""

    differences: dict[str, float]
    tolerance: float = TOLERANCE

    @property
    def worst(self) -> float:
        """The largest difference on ``pred_logits`` / ``pred_boxes`` (``inf`` when one is NaN)."""
        return max(math.inf if math.isnan(self.differences[name]) else self.differences[name] for name in BOX_OUTPUTS)

    @property
    def passed(self) -> bool:
        """True when ``pred_logits`` and ``pred_boxes`` differ by at most ``tolerance``."""
        return self.worst <= self.tolerance

    def __str__(self) -> str:
        return ", ".join(f"{name} {diff:.2e}" for name, diff in self.differences.items())


def verify_export(
    model: nn.Module,
    exported: str | Path | ExportedRunner,
    fmt: str | None = None,
    *,
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    dynamic: bool = True,
    batches: Sequence[Samples] | None = None,
    tolerance: float = TOLERANCE,
) -> ExportCheck:
    """Compare an exported model (a file, or a runner from ``load_exported``) with the eager ``model``.

    ``batches`` default to ``check_batches(sample_size, dynamic=dynamic)``; each is a NestedTensor,
    a list of [3, H, W] images or a [B, 3, H, W] tensor. The model is run in eval mode and left in
    its own mode afterwards. Returns the per-output max differences and whether they pass ``tolerance``.
    """
    runner = load_exported(exported, fmt) if isinstance(exported, str | Path) else exported
    device = next(model.parameters()).device
    if batches is None:
        batches = check_batches(sample_size, dynamic=dynamic, device=device)
    worst: dict[str, float] = {}
    for samples in batches:
        for name, diff in _differences(model, runner, as_nested_tensor(samples).to(device)).items():
            previous = worst.get(name, 0.0)
            worst[name] = math.nan if math.isnan(diff) or math.isnan(previous) else max(diff, previous)
    return ExportCheck(worst, tolerance)


def _differences(model: nn.Module, runner: ExportedRunner, batch: NestedTensor) -> dict[str, float]:
    """Max |runner - model| per output that the eager model returns (auxiliary outputs aside)."""
    with eval_mode(model), torch.no_grad():
        expected: Mapping[str, Tensor] = model(batch)
        got = runner(batch)
    names = [name for name in expected if name != "aux_outputs"]
    missing = [name for name in names if name not in got]
    if missing:
        raise InputFileError(f"{getattr(runner, 'path', 'the exported model')}: does not return {', '.join(missing)}")
    device = batch.tensors.device
    return {name: float((got[name].to(device, torch.float32) - expected[name].float()).abs().max()) for name in names}
