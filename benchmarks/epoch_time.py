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
import itertools
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import machine_description  # noqa: E402

from torchdetr.cli.train import config_for_training  # noqa: E402
from torchdetr.config import add_config_arguments  # noqa: E402
from torchdetr.data.build import build_dataset, get_coco_api  # noqa: E402
from torchdetr.engine.datasets import resolve_num_classes  # noqa: E402
from torchdetr.engine.loaders import make_loaders  # noqa: E402
from torchdetr.engine.loop import train_one_epoch  # noqa: E402
from torchdetr.engine.optim import build_optimizer  # noqa: E402
from torchdetr.engine.runtime import resolve_device, seed_everything  # noqa: E402
from torchdetr.losses.build import build_model  # noqa: E402
from torchdetr.training import build_training_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "epoch_time.md"


def time_steps(train_flags: list[str], iterations: int) -> tuple[float, int, str]:
    """(seconds per training iteration, iterations per epoch, device) for the given ``detr train`` flags.

    Runs the engine's own ``train_one_epoch`` (the exact step ``detr train`` takes: autocast, losses,
    clipping, optimizer, schedule) on the first ``iterations + 1`` batches, timing each step.
    """
    parser = argparse.ArgumentParser(prog="detr train")
    parser.add_argument("--config")
    add_config_arguments(parser)
    args = parser.parse_args(["--backbone_weights", "none", "--num_workers", "0", *train_flags])
    cfg = config_for_training(args)
    seed_everything(cfg.seed)
    dataset_train, dataset_val = build_dataset("train", cfg), build_dataset("val", cfg)
    cfg = resolve_num_classes(cfg, get_coco_api(dataset_val))
    device = resolve_device(cfg.device)
    model, criterion, _ = build_model(cfg)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    training = build_training_model(model, criterion, cfg)
    module, loss_fn = training if training is not None else (model, criterion)
    module.to(device)
    loader, _ = make_loaders(dataset_train, dataset_val, cfg)
    optimizer, lr_scheduler, per_iteration = build_optimizer(module, cfg, len(loader))
    threads = torch.get_num_threads()
    marks: list[tuple[float, float]] = []  # (process CPU time, wall time) after each step

    def mark(step: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append((time.process_time(), time.perf_counter()))
        logging.info("step %d done", step)

    train_one_epoch(module, loss_fn, itertools.islice(loader, iterations + 1), optimizer, device, 0, cfg,
                    lr_scheduler=lr_scheduler if per_iteration else None, on_step=mark)
    # the first step pays for allocation and kernel selection: time the ones after it
    (cpu0, wall0), (cpu1, wall1) = marks[0], marks[-1]
    steps = len(marks) - 1
    if steps < 1:
        raise SystemExit(f"the training set has only {len(marks)} batch(es): nothing to time after the warm-up step")
    # on the CPU: process CPU time / threads (= wall time on an idle machine, fair on a busy one)
    seconds = (wall1 - wall0) if device.type == "cuda" else (cpu1 - cpu0) / threads
    return seconds / steps, len(loader), str(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="what this run measures (a row label)")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations (after one warm-up; at least 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then detr train flags")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    if args.iterations < 1:
        parser.error(f"--iterations must be at least 1, got {args.iterations}")
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
