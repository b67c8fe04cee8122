"""The faithful training step vs the fast one (``--fast_train``), side by side in one process.

One step = forward (aux losses), criterion, weighted total, ``zero_grad``, backward, gradient clipping
at 0.1 and the AdamW step, on a batch of 2 images (~512×683, padded) with 7 and 12 objects, the
original recipe's model (``--backbone resnet50`` with frozen batch norm; random weights: the cost of
a step does not depend on them). Variants, each on its own copy of the same weights:

- ``faithful``: the original's step (what ``detr train`` runs by default);
- ``cl``: the faithful step with ``--channels_last``;
- ``fast``: ``--fast_train`` (frozen norms folded into the convolutions, channels-last convolutions,
  attention without weights while training, all decoder layers matched and scored at once,
  ``training.fast_step``);
- ``fast bf16``: also ``--amp bf16`` (losses in float32).

First, a parity step with dropout switched off (dropout masks are random numbers each path draws
differently): largest loss and gradient differences of ``fast`` vs ``faithful``. Then the timed steps
are interleaved (variant A, B, C, D, A, B, …) so that a change of machine load hits all variants alike;
reported: median wall time and median process CPU time / threads per step, and each one's ratio to
``faithful``. Writes ``benchmarks/results/train_step.md`` (``--overwrite`` to replace it).

    python benchmarks/train_step.py [--backbone resnet50] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import machine_description  # noqa: E402

from torchdetr.config import DETRConfig  # noqa: E402
from torchdetr.engine.optim import build_optimizer  # noqa: E402
from torchdetr.engine.runtime import autocast_context, to_float  # noqa: E402
from torchdetr.losses.build import build_model  # noqa: E402
from torchdetr.structures import nested_tensor_from_tensor_list  # noqa: E402
from torchdetr.training.fast_step import FastSetCriterion, enable_fast_training  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "train_step.md"
IMAGE_SIZES = ((512, 683), (480, 640))  # the two images of the batch (padded to 512×683)
OBJECTS = (7, 12)
CLIP_MAX_NORM = 0.1


def make_batch(num_classes: int) -> tuple:
    """A fixed batch: NestedTensor [2, 3, 512, 683] and two targets (normalised cxcywh boxes)."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=generator) for h, w in IMAGE_SIZES]
    targets = []
    for count in OBJECTS:
        centre = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
        size = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, num_classes, (count,), generator=generator),
                        "boxes": torch.cat([centre, size], 1)})
    return nested_tensor_from_tensor_list(images), targets


class Variant:
    """One way of running the training step, on its own copy of the weights and its own optimizer."""

    def __init__(self, name: str, model: nn.Module, criterion: nn.Module, cfg: DETRConfig, fast: bool,
                 channels_last: bool, amp: str) -> None:
        self.name = name
        self.model = copy.deepcopy(model)
        self.criterion = FastSetCriterion.from_criterion(criterion) if fast else criterion
        self.channels_last = channels_last
        if channels_last:  # as --channels_last (implied by --fast_train) does: the model's and the images' memory format
            self.model.to(memory_format=torch.channels_last)
        if fast:
            enable_fast_training(self.model, channels_last=channels_last)
        self.amp = amp
        self.optimizer, _, _ = build_optimizer(self.model, cfg)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def losses(self, samples, targets) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self.channels_last:
            samples = copy.copy(samples)
            samples.tensors = samples.tensors.contiguous(memory_format=torch.channels_last)
        with autocast_context(torch.device("cpu"), self.amp):
            outputs = self.model(samples)
        loss_dict = self.criterion(to_float(outputs), targets)
        return loss_dict, self.criterion.weighted_total(loss_dict)

    def step(self, samples, targets) -> float:
        """One full training step; returns the loss (its ``float`` is the step's one host sync, as in the loop)."""
        loss_dict, total = self.losses(samples, targets)
        value = float(total.detach())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_MAX_NORM)
        self.optimizer.step()
        return value

    def timed_step(self, samples, targets, threads: int) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.step(samples, targets)
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append((time.process_time() - cpu) / threads)


def without_dropout(model: nn.Module, run: Callable[[], object]) -> object:
    """``run()`` with every dropout of ``model`` at p = 0 (restored after)."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.Dropout | nn.MultiheadAttention):
            saved.append((module, module.p if isinstance(module, nn.Dropout) else module.dropout))
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            else:
                module.dropout = 0.0
    try:
        return run()
    finally:
        for module, p in saved:
            if isinstance(module, nn.Dropout):
                module.p = p
            else:
                module.dropout = p


def losses_and_gradients(variant: Variant, samples, targets) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    variant.model.zero_grad(set_to_none=True)
    loss_dict, total = variant.losses(samples, targets)
    total.backward()
    grads = {n: p.grad.clone() for n, p in variant.model.named_parameters() if p.grad is not None}
    variant.model.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in loss_dict.items()}, grads


def parity(faithful: Variant, fast: Variant, samples, targets) -> tuple[float, float]:
    """(max |Δ loss|, max over parameters of max |Δ grad| / max |grad|) of ``fast`` vs ``faithful``, dropout off."""
    ref_losses, ref_grads = without_dropout(faithful.model, lambda: losses_and_gradients(faithful, samples, targets))
    fast_losses, fast_grads = without_dropout(fast.model, lambda: losses_and_gradients(fast, samples, targets))
    if list(ref_losses) != list(fast_losses) or ref_grads.keys() != fast_grads.keys():
        raise SystemExit("the fast step's losses or gradients have other entries than the faithful step's")
    loss_diff = max(float((fast_losses[k] - v).abs()) for k, v in ref_losses.items())
    grad_diff = max(float((fast_grads[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)) for n, g in ref_grads.items())
    return loss_diff, grad_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--runs", type=int, default=3, help="timed steps per variant (after one warm-up step each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="faithful,cl,fast,fast-bf16", help="of faithful,cl,fast,fast-bf16")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if RESULTS.exists() and not args.overwrite:
        raise SystemExit(f"{RESULTS} exists: pass --overwrite to replace it")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = DETRConfig(backbone=args.backbone, backbone_weights="none", backbone_norm="frozen")
    model, criterion, _ = build_model(cfg)
    model.train()
    criterion.train()
    samples, targets = make_batch(cfg.num_classes)
    recipes = {"faithful": ("faithful step (the original's)", False, False, "none"),
               "cl": ("`--channels_last`", False, True, "none"),
               "fast": ("`--fast_train` (channels-last included)", True, True, "none"),
               "fast-bf16": ("`--fast_train --amp bf16`", True, True, "bf16")}
    names = args.variants.split(",")
    variants = [Variant(recipes[n][0], model, criterion, cfg, *recipes[n][1:]) for n in names]
    faithful = variants[names.index("faithful")]
    fast = variants[names.index("fast")]
    loss_diff, grad_diff = parity(faithful, fast, samples, targets)
    print(f"parity (dropout off): max |Δ loss| {loss_diff:.2e}, max relative |Δ grad| {grad_diff:.2e}", flush=True)
    for variant in variants:  # warm-up: allocator, oneDNN primitives
        variant.step(samples, targets)
    for run in range(args.runs):
        for variant in variants:
            variant.timed_step(samples, targets, args.threads)
            print(f"run {run}: {variant.name}: {variant.wall[-1]:.2f} s wall, {variant.cpu[-1]:.2f} s CPU/thread", flush=True)

    base_wall, base_cpu = statistics.median(faithful.wall), statistics.median(faithful.cpu)
    base_best = min(faithful.wall)
    rows = [f"| {v.name} | {statistics.median(v.wall):.2f} | {base_wall / statistics.median(v.wall):.2f}× | "
            f"{min(v.wall):.2f} | {base_best / min(v.wall):.2f}× | "
            f"{statistics.median(v.cpu):.2f} | {base_cpu / statistics.median(v.cpu):.2f}× |" for v in variants]
    header = "| step | wall s (median) | × faithful | wall s (best) | × faithful | CPU s / thread (median) | × faithful |"
    table = "\n".join([header, "|---|---:|---:|---:|---:|---:|---:|", *rows])
    print(table)
    RESULTS.write_text(
        "# Training step: faithful vs `--fast_train`\n\n"
        f"Written by `python benchmarks/train_step.py --backbone {args.backbone} --runs {args.runs} --threads "
        f"{args.threads} --overwrite`.\n\n"
        f"Machine: {machine_description()}; load average during the run {', '.join(f'{x:.1f}' for x in _load())}.\n\n"
        f"Step: DETR-{args.backbone.replace('resnet', 'R')} (frozen batch norm, 6+6 layers, 100 queries, aux losses), "
        "batch 2 (512×683 and 480×640 padded to 512×683; 7 and 12 objects), forward + criterion + backward + "
        "clip 0.1 + AdamW, fp32 unless said; dropout 0.1 as the recipe; random weights. "
        f"{args.runs} timed steps per variant after one warm-up, interleaved.\n\n"
        f"Parity of `--fast_train` vs faithful on this model (one step, dropout off): max |Δ loss| {loss_diff:.1e}, "
        f"largest gradient difference {grad_diff:.1e} of the parameter's largest gradient entry.\n\n"
        f"{table}\n"
    )
    print(f"wrote {RESULTS}")


def _load() -> tuple[float, float, float]:
    try:
        import os
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


if __name__ == "__main__":
    main()
