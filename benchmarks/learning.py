"""Learning benchmark: AP / AP50 against training time, from scratch, on the CPU.

Every row trains the same small DETR (resnet18 backbone, hidden 128, 3+3 layers, 20 queries) from
random weights (``--backbone_weights none``) on the same data with the same seed, and evaluates
COCO AP on the validation split after 5, 10 and 20 minutes of training. Rows differ only in the
training techniques they switch on (see ``ROWS``).

Time is training time only (evaluation is not counted) and is measured as the process's CPU time
divided by the number of threads (``--threads``, default 2): on an idle 2-core machine this equals
wall-clock time, and it stays fair when other work shares the machine. Wall-clock time is reported
too. The data is generated in the main process (``num_workers 0``) so all work is counted.

    python benchmarks/learning.py                       # all rows, 20 minutes each, synthetic data
    python benchmarks/learning.py --rows plain best --minutes 5 10 20
    python benchmarks/learning.py --dataset bccd --rows plain best --minutes 20

Results are appended to ``benchmarks/results/learning.json`` and the table in
``benchmarks/results/learning.md`` is rewritten from all results.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_description  # noqa: E402

from torchdetr.config import DETRConfig  # noqa: E402
from torchdetr.data.build import build_dataset, get_coco_api  # noqa: E402
from torchdetr.engine.datasets import resolve_num_classes  # noqa: E402
from torchdetr.engine.evaluate import evaluate  # noqa: E402
from torchdetr.engine.loaders import make_loaders  # noqa: E402
from torchdetr.engine.optim import build_optimizer  # noqa: E402
from torchdetr.engine.runtime import autocast_context, seed_everything, to_device, to_float  # noqa: E402
from torchdetr.losses.build import build_model  # noqa: E402
from torchdetr.training import ModelEMA, build_training_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

# The model and data every row shares (the setting of the plain-DETR measurement).
BASE = dict(
    backbone="resnet18", hidden_dim=128, nheads=8, enc_layers=3, dec_layers=3, dim_feedforward=512, num_queries=20,
    batch_size=16, lr=1e-4, dataset_file="synthetic", num_train=4000, num_val=200, image_size=128,
    backbone_weights="none", num_workers=0, seed=42,
)

# The best combination found: two-stage anchor variant with denoising, focal loss, DC5, bf16.
BEST: dict[str, Any] = dict(
    backbone_norm="batch", lr_backbone=2e-4, lr=2e-4, warmup_iters=100, variant="dab", two_stage=True, dn_groups=5,
    cls_loss="focal", cls_loss_coef=2, set_cost_class=2, dilation=True, amp="bf16", channels_last=True, train_recipe="small",
)

# One row per technique and combination; each dict overrides BASE.
ROWS: dict[str, dict[str, Any]] = {
    # the original recipe from scratch: frozen (uncalibrated) BatchNorm, stem + layer1 frozen, lr_backbone 1e-5
    "plain": dict(backbone_norm="frozen"),
    # 1. a backbone fit for training from scratch: trainable BatchNorm, every layer trained
    "bn": dict(backbone_norm="batch"),
    "bn+lr": dict(backbone_norm="batch", lr_backbone=1e-4),
    # 2-5 on top of bn+lr, one at a time
    "groups": dict(backbone_norm="batch", lr_backbone=1e-4, num_groups=5),
    "denoising": dict(backbone_norm="batch", lr_backbone=1e-4, dn_groups=5),
    "focal": dict(backbone_norm="batch", lr_backbone=1e-4, cls_loss="focal", set_cost_class=2),
    "schedule": dict(backbone_norm="batch", lr_backbone=1e-4, lr=2e-4, warmup_iters=200, ema=True),
    "dc5": dict(backbone_norm="batch", lr_backbone=1e-4, dilation=True),
    "amp": dict(backbone_norm="batch", lr_backbone=1e-4, amp="bf16", channels_last=True),
    "small-recipe": dict(backbone_norm="batch", lr_backbone=1e-4, train_recipe="small"),
    "dense": dict(backbone_norm="batch", lr_backbone=1e-4, dense_head=True),
    "dab": dict(backbone_norm="batch", lr_backbone=1e-4, variant="dab"),
    "two-stage": dict(backbone_norm="batch", lr_backbone=1e-4, variant="dab", two_stage=True, cls_loss="focal",
                      set_cost_class=2),
    # the best plain-DETR combination (the model stays the original architecture)
    "best-detr": dict(backbone_norm="batch", lr_backbone=2e-4, lr=2e-4, warmup_iters=100, num_groups=5, dn_groups=5,
                      cls_loss="focal", set_cost_class=2, dilation=True, amp="bf16", channels_last=True,
                      train_recipe="small"),
    # the best combination found (= configs/quickstart.yaml's techniques)
    "best": BEST,
}

BCCD = ROOT.parent / "shared" / "data" / "bccd"




class TrainingClock:
    """Training time as process CPU seconds / threads (pauses while evaluating), and wall seconds."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.cpu = 0.0
        self.wall = 0.0
        self._cpu0 = self._wall0 = None

    def start(self) -> None:
        self._cpu0, self._wall0 = time.process_time(), time.monotonic()

    def stop(self) -> None:
        self.cpu += (time.process_time() - self._cpu0) / self.threads
        self.wall += time.monotonic() - self._wall0

    def minutes(self) -> float:
        running = (time.process_time() - self._cpu0) / self.threads if self._cpu0 is not None else 0.0
        return (self.cpu + running) / 60


def class_agnostic_ap50(evaluator: Any, coco_gt: Any) -> float:
    """AP50 ignoring classes (pycocotools with ``useCats = 0``): how well objects are found at all."""
    results = evaluator.results("bbox")
    if not results:
        return 0.0
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "bbox")
        coco_eval.params.useCats = 0
        coco_eval.params.imgIds = sorted(coco_gt.getImgIds())
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return float(coco_eval.stats[1])


def run_row(name: str, overrides: dict[str, Any], minutes: list[float], threads: int, dataset: str) -> dict[str, Any]:
    values = {**BASE, **overrides}
    if dataset == "bccd":
        values.update(dataset_file="coco", coco_path=str(BCCD), image_size=256, num_queries=50)
    cfg = DETRConfig(**values)
    seed_everything(cfg.seed)
    dataset_train, dataset_val = build_dataset("train", cfg), build_dataset("val", cfg)
    base_ds = get_coco_api(dataset_val)
    cfg = resolve_num_classes(cfg.replace(num_classes=None), base_ds)
    model, criterion, postprocessors = build_model(cfg)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    training = build_training_model(model, criterion, cfg)
    train_module, train_criterion = training if training is not None else (model, criterion)
    loader_train, loader_val = make_loaders(dataset_train, dataset_val, cfg)
    total_minutes = max(minutes)
    # schedules are laid out over the expected number of iterations (measured after the first 20)
    optimizer, lr_scheduler, per_iteration = build_optimizer(train_module, cfg, len(loader_train))
    ema = ModelEMA(model, decay=cfg.ema_decay, warmup=200) if cfg.ema else None
    device = torch.device("cpu")
    clock = TrainingClock(threads)
    checkpoints = sorted(minutes)
    row: dict[str, Any] = {"row": name, "dataset": dataset, "overrides": overrides, "points": []}
    iterations, epoch = 0, 0
    logging.info("%s: %s", name, overrides)
    clock.start()
    done = False
    while not done:
        for samples, targets in loader_train:
            train_module.train()
            samples, targets = to_device(samples, targets, device, cfg.channels_last)
            with autocast_context(device, cfg.amp):
                predictions = train_module(samples, targets) if training is not None else train_module(samples)
            predictions = to_float(predictions)
            loss_dict = train_criterion(predictions, targets)
            loss = train_criterion.weighted_total(loss_dict)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(train_module.parameters(), cfg.clip_max_norm)
            optimizer.step()
            if per_iteration:
                lr_scheduler.step()
            if ema is not None:
                ema.update(model)
            iterations += 1
            if iterations % 100 == 0:
                logging.info("%s: it %d, %.1f min, loss %.3f", name, iterations, clock.minutes(), float(loss.detach()))
            if clock.minutes() >= checkpoints[0]:
                clock.stop()
                eval_model = ema.module if ema is not None else model
                result = evaluate(eval_model, criterion, postprocessors, loader_val, base_ds, device, cfg,
                                  print_tables=False)
                point = {"minutes": checkpoints[0], "iterations": iterations, "cpu_minutes": clock.cpu / 60,
                         "wall_minutes": clock.wall / 60, "AP": result.ap, "AP50": result.ap50,
                         "AP50_class_agnostic": class_agnostic_ap50(result.evaluator, base_ds),
                         "it_per_s": iterations / clock.cpu, "train_loss": float(loss.detach())}
                logging.info("%s @ %.0f min: AP %.3f AP50 %.3f (class-agnostic %.3f) (%d it, %.2f it/s)", name,
                             checkpoints[0], result.ap, result.ap50, point["AP50_class_agnostic"], iterations,
                             point["it_per_s"])
                row["points"].append(point)
                checkpoints.pop(0)
                if not checkpoints:
                    done = True
                    break
                clock.start()
        if not per_iteration and not done:
            lr_scheduler.step()
        epoch += 1
    row["epochs"] = epoch
    row["total_minutes"] = total_minutes
    return row


def write_markdown(results: list[dict[str, Any]], machine: str, path: Path) -> None:
    lines = [
        "# Learning benchmark: AP against CPU training time, from scratch",
        "",
        "Written by `benchmarks/learning.py` (see its docstring for the protocol). Model for every row: resnet18, "
        "hidden 128, 3+3 layers, FFN 512, 20 queries, batch 16, random initial weights; synthetic data: "
        f"{BASE['num_train']} training / {BASE['num_val']} validation images of 128 px (bccd rows: the real "
        "blood-cell data at 256 px, 50 queries). Time = process CPU time / threads (training only, evaluation "
        "excluded); with 1 thread a minute is one core-minute, half of what a 2-core machine does in a minute, "
        "so 1-thread rows understate what 2 cores reach in the same wall time.",
        "",
        f"Machine: {machine}",
        "",
        "| dataset | row | techniques | threads | it/s | AP@5 | AP50@5 | AP@10 | AP50@10 | AP@20 | AP50@20 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        by_min = {round(p["minutes"]): p for p in r["points"]}
        cells = []
        for m in (5, 10, 20):
            p = by_min.get(m)
            cells += [f"{p['AP']:.3f}", f"{p['AP50']:.3f}"] if p else ["-", "-"]
        speed = r["points"][-1]["it_per_s"] if r["points"] else float("nan")
        techniques = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        head = f"| {r['dataset']} | {r['row']} | {techniques} | {r.get('threads', 2)} | {speed:.2f} | "
        lines.append(head + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--try", dest="try_row", metavar="JSON",
                        help='run one ad-hoc row instead, e.g. \'{"name": "x", "lr": 3e-4}\' (exploration)')
    parser.add_argument("--minutes", nargs="+", type=float, default=[5, 10, 20])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", default="synthetic", choices=("synthetic", "bccd"))
    parser.add_argument("--out", default=str(RESULTS / "learning.json"),
                        help="results file shared by runs (rows are added; the table beside it is rewritten)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace rows of --out already measured for these names and dataset")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    machine = machine_description()
    rows = dict(ROWS)
    if args.try_row:
        extra = json.loads(args.try_row)
        name = extra.pop("name", "try")
        rows = {name: extra}
        args.rows = [name]
    earlier = {r["row"] for r in (json.loads(out.read_text()) if out.exists() else []) if r["dataset"] == args.dataset}
    measured = sorted(earlier & set(args.rows))
    if measured and not args.overwrite:  # checked before measuring: a refused run costs nothing
        raise SystemExit(f"--out {out} already has {', '.join(measured)} on {args.dataset}: pass --overwrite to replace")
    for name in args.rows:
        row = run_row(name, rows[name], args.minutes, args.threads, args.dataset)
        row["machine"] = machine
        row["threads"] = args.threads
        row["date"] = time.strftime("%Y-%m-%d %H:%M")
        results = json.loads(out.read_text()) if out.exists() else []  # re-read: parallel runs share the file
        results = [r for r in results if not (r["row"] == name and r["dataset"] == args.dataset)] + [row]
        out.write_text(json.dumps(results, indent=1))
        write_markdown(results, machine, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
