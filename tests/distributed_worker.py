"""The distributed tests' worker: run under ``torchrun`` by ``tests/test_distributed.py``.

``python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.distributed_worker OUT`` trains
the tiny model for a few steps with each training technique (one process group per run, each run in
``OUT/<case>``), then one step of batch 1 per process on two images (``OUT/equal``: the test compares it
with one process taking both images in a batch of 2). Each case's outcome goes to ``OUT/<case>/outcome.json``
(rank 0). Torch is imported and the process group joined once for all cases: ``train()`` leaves the group
at its end, which is made a no-op here (joining again from the same processes is not reliable).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from torchdetr.config import DETRConfig
from torchdetr.engine import distributed as du
from torchdetr.engine.datasets import load_run_data
from torchdetr.engine.run import train
from torchdetr.losses.build import build_model

from .tiny import TINY_MODEL

# a few steps of each: 4 images, batch 1 per process → 2 steps per epoch on 2 processes
RUN: dict[str, Any] = dict(dataset_file="synthetic", num_train=4, num_val=3, image_size=64, batch_size=1, epochs=1,
                           train_recipe="small", num_workers=0, device="cpu", lr_backbone=0, dist_timeout=0.5,
                           num_classes=None)  # classes from the data (6), as `detr train`
MASKS: dict[str, Any] = dict(masks=True, hidden_dim=128, nheads=8)
TECHNIQUES: dict[str, dict[str, Any]] = {
    "plain": {},
    "query_groups": dict(num_groups=3),
    "denoising": dict(dn_groups=2),
    "dense_head": dict(dense_head=True),
    "focal_loss": dict(cls_loss="focal"),
    "anchor_variant": dict(variant="dab"),
    "two_stage": dict(variant="dab", two_stage=True),
    "ema": dict(ema=True),
    "backbone_trained": dict(lr_backbone=1e-5, backbone_norm="batch"),
    "masks": MASKS,
    "frozen_weights": MASKS,  # + frozen_weights: a detection checkpoint written first
}
EQUAL_LR = 1e-3  # a step large enough to move every weight measurably


def config(name: str, out: Path, **overrides: Any) -> DETRConfig:
    return DETRConfig(**(TINY_MODEL | RUN | {"output_dir": str(out / name)} | overrides))


def detection_checkpoint(out: Path) -> str:
    """A detector for ``--frozen_weights`` (seeded, so every process writes the same weights; one file each)."""
    torch.manual_seed(0)
    model, _, _ = build_model(DETRConfig(**(TINY_MODEL | MASKS | {"num_classes": 6})))
    path = out / f"detector_rank{du.get_rank()}.pth"
    torch.save({"model": model.detr.state_dict()}, path)
    return str(path)


def equal_images(cfg: DETRConfig) -> list[int]:
    """Two validation images with the same number of objects (the class loss is a weighted mean over a
    batch's queries: batch 2 equals the mean of two batches of 1 only then)."""
    val = load_run_data(cfg, with_train=False).val
    counts = [len(val[i][1]["labels"]) for i in range(len(val))]
    for i in range(len(counts)):
        for j in range(i + 1, len(counts)):
            if counts[i] == counts[j] and counts[i] > 0:
                return [i, j]
    raise RuntimeError(f"no two images with the same object count: {counts}")


def equal_run(out: Path, world_size: int) -> DETRConfig:
    """One step on the two images: batch 2 in one process, batch 1 in each of two."""
    return config("equal" if world_size == 2 else "equal_single", out, num_val=8, batch_size=2 // world_size,
                  dropout=0.0, lr=EQUAL_LR, clip_max_norm=0.0, backbone_norm="frozen")  # BatchNorm: per-batch stats


def run_equal(cfg: DETRConfig) -> None:
    """Train ``cfg`` for one step on :func:`equal_images` (deterministic: validation transform, no dropout)."""
    val = load_run_data(cfg, with_train=False).val
    images = Subset(val, equal_images(cfg))
    train(cfg, datasets=(images, images))


def main(out: Path) -> None:
    rank = int(__import__("os").environ["RANK"])
    du.init_distributed("cpu", timeout_minutes=RUN["dist_timeout"])
    leave, du.cleanup = du.cleanup, lambda: None
    detector = None
    for name, overrides in [*TECHNIQUES.items(), ("equal", None)]:
        outcome: dict[str, Any] = {"ok": True}
        try:
            if overrides is None:
                run_equal(equal_run(out, 2))
            else:
                if name == "frozen_weights":
                    detector = detector or detection_checkpoint(out)
                    overrides = {**overrides, "frozen_weights": detector, "num_classes": 6}
                result = train(config(name, out, **overrides))
                outcome["iterations"] = result.iterations
        except Exception as err:  # reported per case (the processes may be out of step after a failure)
            outcome = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        if rank == 0:
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / "outcome.json").write_text(json.dumps(outcome))
    leave()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
