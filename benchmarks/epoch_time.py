"""Time per training epoch of a recipe on a real dataset, measured on a few iterations.

Runs ``--iterations`` training steps (after one warm-up step) of the model a config describes on the
dataset it names, and projects the time of one epoch (seconds per iteration × iterations per epoch).
On the CPU, time is process CPU time / threads, as in
``learning.py``. Weights do not change the cost of a step, so the backbone starts from random values (nothing to
download). Used for the timings of ``docs/custom_data.md``:

    python benchmarks/epoch_time.py --name "R50 fine-tune, batch 4, fp32" -- \\
        --coco_path ../shared/data/bccd --batch_size 4
    python benchmarks/epoch_time.py --name "quick recipe" -- --config configs/bccd_cpu.yaml --coco_path ../shared/data/bccd

Everything after ``--`` is ``detr train`` flags. One line per run is appended to
``benchmarks/results/epoch_time.md`` with the machine described.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from learning import machine_description  # noqa: E402

from torchdetr.cli.train import config_for_training  # noqa: E402
from torchdetr.config import add_config_arguments  # noqa: E402
from torchdetr.data.build import build_dataset, get_coco_api  # noqa: E402
from torchdetr.engine.train import (  # noqa: E402
    _to_device,
    autocast_context,
    build_optimizer,
    make_loaders,
    resolve_device,
    seed_everything,
    to_float,
)
from torchdetr.models.build import build_model  # noqa: E402
from torchdetr.training import build_training_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "epoch_time.md"


def time_steps(train_flags: list[str], iterations: int) -> tuple[float, int, str]:
    """(seconds per training iteration, iterations per epoch, device) for the given ``detr train`` flags."""
    parser = argparse.ArgumentParser(prog="detr train")
    parser.add_argument("--config")
    add_config_arguments(parser)
    args = parser.parse_args(["--backbone_weights", "none", "--num_workers", "0", *train_flags])
    cfg = config_for_training(args)
    seed_everything(cfg.seed)
    dataset_train, dataset_val = build_dataset("train", cfg), build_dataset("val", cfg)
    if cfg.num_classes is None:
        cfg = cfg.replace(num_classes=max(get_coco_api(dataset_val).getCatIds()) + 1)
    device = resolve_device(cfg.device)
    model, criterion, _ = build_model(cfg)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    training = build_training_model(model, criterion, cfg)
    module, loss_fn = training if training is not None else (model, criterion)
    module.to(device).train()
    loader, _ = make_loaders(dataset_train, dataset_val, cfg)
    optimizer, _, _ = build_optimizer(module, cfg, len(loader))
    seconds: list[float] = []
    threads = torch.get_num_threads()
    for step, (samples, targets) in enumerate(loader):
        if step > iterations:
            break
        start, cpu_start = time.perf_counter(), time.process_time()
        samples, targets = _to_device(samples, targets, device, cfg.channels_last)
        with autocast_context(device, cfg.amp):
            predictions = module(samples, targets) if training is not None else module(samples)
        loss = loss_fn.weighted_total(loss_fn(to_float(predictions), targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        # on the CPU: process CPU time / threads (= wall time on an idle machine, fair on a busy one)
        elapsed = wall if device.type == "cuda" else (time.process_time() - cpu_start) / threads
        if step > 0:  # the first step pays for allocation and kernel selection
            seconds.append(elapsed)
        logging.info("step %d: %.2f s (wall %.2f s)", step, elapsed, wall)
    return sum(seconds) / len(seconds), len(loader), str(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="what this run measures (a row label)")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then detr train flags")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    per_iteration, per_epoch, device = time_steps(flags, args.iterations)
    machine = f"{device}: {machine_description()}, {args.threads} threads"
    line = (f"| {args.name} | `{' '.join(flags)}` | {machine} | {per_iteration:.2f} | "
            f"{per_epoch} | {per_iteration * per_epoch / 60:.1f} | {time.strftime('%Y-%m-%d')} |")
    print(line)
    if not RESULTS.exists():
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            "# Time per training epoch (projected from timed iterations)\n\n"
            "Written by `benchmarks/epoch_time.py`; weights random (cost does not depend on them). "
            "Image sizes vary per batch with the training recipe: a projection from a few iterations.\n\n"
            "| run | flags | machine | s/iteration | iterations/epoch | min/epoch | date |\n"
            "|---|---|---|---|---|---|---|\n")
    with RESULTS.open("a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
