"""The panoptic two-stage recipe on the synthetic panoptic set, on the CPU: time, box/mask AP and PQ.

Protocol (the original's recipe, shrunk to a CPU): ``detr data synth --panoptic`` writes ``--num_train`` /
``--num_val`` images of ``--image_size`` px; stage 1 trains the box model from random weights
(``--backbone_weights none``) for ``--box_epochs``; stage 2 trains only the mask head on the frozen detector
(``--masks --frozen_weights BOX``) for ``--mask_epochs``; both evaluate on the held-out validation split at
their end (stage 1: box AP; stage 2: box AP, mask AP, PQ / SQ / RQ for All, Things and Stuff). The same
small model for both stages (``MODEL``). Time: wall clock and process CPU time / threads of each stage's
training (evaluation included, it is part of a run).

    python benchmarks/panoptic_recipe.py                        # the documented run
    python benchmarks/panoptic_recipe.py --box_epochs 2 --mask_epochs 1 --num_train 200   # a quick look

Writes ``benchmarks/results/panoptic_recipe.md`` and, with ``--picture PNG``, the validation images'
panoptic predictions drawn by ``detr predict --task panoptic``'s renderer (``docs/images/panoptic.png``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_description  # noqa: E402  (benchmarks/)
from results_file import add_output_arguments, output_path, write_results  # noqa: E402  (benchmarks/)

from torchdetr.config import DETRConfig  # noqa: E402
from torchdetr.data.synthetic_panoptic import write_panoptic_folder  # noqa: E402
from torchdetr.engine.run import train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "panoptic_recipe.md"
MODEL: dict[str, Any] = dict(
    backbone="resnet18", hidden_dim=128, nheads=8, enc_layers=2, dec_layers=2, dim_feedforward=512, num_queries=10,
    backbone_weights="none", backbone_norm="batch", lr=2e-4, lr_backbone=2e-4, batch_size=8, num_workers=0, seed=42,
    dataset_file="coco_panoptic", device="cpu",
)
PICTURE_IMAGES = 3
PICTURE_UPSCALE = 4  # the synthetic images are small: drawn larger so that class names are readable


def timed_train(cfg: DETRConfig, threads: int) -> tuple[Any, float, float]:
    """Run ``train(cfg)``; its result, wall seconds and CPU seconds per thread."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(cfg)
    return result, time.perf_counter() - wall, (time.process_time() - cpu) / threads


def draw_picture(checkpoint: Path, data: Path, out: Path, threshold: float | None = None) -> None:
    """The first validation images drawn by ``detr predict --task panoptic``'s renderer: their ground truth (top
    row) and the model's panoptic predictions (bottom row; ``threshold``: default the original's 0.85)."""
    import numpy as np
    from PIL import Image

    from torchdetr.data.io import load_segment_ids
    from torchdetr.inference.detector import Detector
    from torchdetr.viz.panoptic import draw_panoptic

    truth = json.loads((data / "annotations" / "panoptic_val.json").read_text())
    names = {c["id"]: c["name"] for c in truth["categories"]}
    things = {c["id"] for c in truth["categories"] if c["isthing"]}
    annotations = sorted(truth["annotations"], key=lambda a: a["file_name"])[:PICTURE_IMAGES]

    def upscale(array: np.ndarray) -> np.ndarray:
        return array.repeat(PICTURE_UPSCALE, 0).repeat(PICTURE_UPSCALE, 1)

    images = [Image.fromarray(upscale(np.asarray(Image.open(data / "images" / a["file_name"]).convert("RGB"))))
              for a in annotations]
    rows = [[draw_panoptic(im, upscale(load_segment_ids(data / "panoptic" / a["file_name"])),
                           [{**s, "isthing": s["category_id"] in things} for s in a["segments_info"]], names)
             for im, a in zip(images, annotations)]]
    detector = Detector.from_pretrained(str(checkpoint), device="cpu")
    rows.append([draw_panoptic(im, p.id_map, p.segments_info, names)
                 for im, p in zip(images, detector.predict(images, task="panoptic", threshold=threshold))])
    gap, side = 4, images[0].width
    canvas = Image.new("RGB", (len(images) * (side + gap) - gap, len(rows) * (side + gap) - gap), "white")
    for r, row in enumerate(rows):
        for c, drawn in enumerate(row):
            canvas.paste(drawn, (c * (side + gap), r * (side + gap)))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_train", type=int, default=64)
    parser.add_argument("--num_val", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--box_epochs", type=int, default=15)
    parser.add_argument("--mask_epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", help="folder for the data and the runs (default: a temporary one, removed)")
    parser.add_argument("--picture", help="also draw validation predictions to this PNG")
    parser.add_argument("--picture_threshold", type=float, help="score threshold of the picture (default 0.85)")
    add_output_arguments(parser, RESULTS)
    args = parser.parse_args()
    output = output_path(args.output, args.overwrite)
    torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="panoptic_recipe_"))
    try:
        data = write_panoptic_folder(work / "data", num_train=args.num_train, num_val=args.num_val, seed=0,
                                     image_size=args.image_size)
        common = dict(MODEL, coco_path=str(data), image_size=args.image_size)
        box_cfg = DETRConfig(**common, epochs=args.box_epochs, eval_every=args.box_epochs,
                             lr_drop=max(1, args.box_epochs * 2 // 3), output_dir=str(work / "box"))
        boxes, box_wall, box_cpu = timed_train(box_cfg, args.threads)
        mask_cfg = DETRConfig(**common, masks=True, frozen_weights=str(work / "box" / "checkpoint.pth"),
                              epochs=args.mask_epochs, eval_every=args.mask_epochs,
                              lr_drop=max(1, args.mask_epochs * 2 // 3), output_dir=str(work / "segm"))
        masks, mask_wall, mask_cpu = timed_train(mask_cfg, args.threads)
        box_row, mask_row = boxes.history[-1], masks.history[-1]
        if args.picture:
            draw_picture(work / "segm" / "checkpoint.pth", data, Path(args.picture), args.picture_threshold)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    iterations = -(-args.num_train // MODEL["batch_size"])
    lines = [
        "# Panoptic two-stage recipe on the synthetic panoptic set (CPU)",
        "",
        f"Written by `benchmarks/panoptic_recipe.py` (protocol in its docstring). Data: `detr data synth --panoptic`, "
        f"{args.num_train} training / {args.num_val} held-out validation images of {args.image_size} px (5 thing and "
        f"3 stuff classes). Model: " + ", ".join(f"{k} {v}" for k, v in MODEL.items() if k not in ("device", "dataset_file"))
        + f"; stage 1 {args.box_epochs} epochs, stage 2 {args.mask_epochs} epochs ({iterations} iterations each). "
        "PQ/SQ/RQ and AP in percent, on the validation split.",
        "",
        f"Machine: {machine_description()}, {args.threads} threads per run; other work shared the cores, so CPU time / "
        "threads is the fairer time.",
        "",
        "| stage | epochs | wall min | CPU min / thread | box AP | box AP50 | mask AP | mask AP50 |",
        "|---|---|---|---|---|---|---|---|",
        f"| 1: box model | {args.box_epochs} | {box_wall / 60:.1f} | {box_cpu / 60:.1f} | "
        f"{pct(box_row['test_coco_eval_bbox'][0])} | {pct(box_row['test_coco_eval_bbox'][1])} | - | - |",
        f"| 2: mask head (`--masks --frozen_weights`) | {args.mask_epochs} | {mask_wall / 60:.1f} | {mask_cpu / 60:.1f} | "
        f"{pct(mask_row['test_coco_eval_bbox'][0])} | {pct(mask_row['test_coco_eval_bbox'][1])} | "
        f"{pct(mask_row['test_coco_eval_masks'][0])} | {pct(mask_row['test_coco_eval_masks'][1])} |",
        "",
        "| after stage 2 | PQ | SQ | RQ | N |",
        "|---|---|---|---|---|",
    ]
    for name, key in (("All", "test_PQ_all"), ("Things", "test_PQ_th"), ("Stuff", "test_PQ_st")):
        group = mask_row[key]
        lines.append(f"| {name} | {pct(group['pq'])} | {pct(group['sq'])} | {pct(group['rq'])} | {group['n']} |")
    write_results(output, "\n".join(lines) + "\n")
    print(json.dumps({"box": box_row.get("test_coco_eval_bbox"), "PQ": mask_row.get("test_PQ_all")}))


if __name__ == "__main__":
    main()
