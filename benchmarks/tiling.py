"""Tiled inference on large images with small objects: AP50 and recall with and without ``--tile``.

A small DETR trained at small scale (the quick-start recipe, ``configs/quickstart.yaml``, on 64-px
synthetic shapes, objects 8–38 px) is run on synthetic 2048×2048 images with 30–60 shapes of 12–24 px
each (``torchdetr.data.synthetic_video.SyntheticLargeImages``). Without tiling the image is resized
to the model's input size (64 px: the objects shrink below one pixel); with ``--tile T`` it is cut
into overlapping T-px windows, each seen at the model's size, and the detections are merged
(``torchdetr.inference.tiles``). The baseline is the untiled run in the same process.

AP50 is COCO AP at IoU 0.5 (pycocotools, detections at threshold 0, at most 100 per image, all of
these objects are COCO "small"); recall is the share of objects matched (same class, IoU ≥ 0.5)
by a detection scoring above 0.5.

    python benchmarks/tiling.py                                   # trains the model first if needed (CPU minutes)
    python benchmarks/tiling.py --checkpoint outputs/tiling_model/checkpoint.pth --tiles 64 96 --images 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_description  # noqa: E402
from results_file import add_output_arguments, output_path, write_results  # noqa: E402

from torchdetr import Detector  # noqa: E402
from torchdetr.data.synthetic_video import SyntheticLargeImages  # noqa: E402
from torchdetr.evaluation.coco import run_coco_eval  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "tiling.md"
MODEL_DIR = ROOT / "outputs" / "tiling_model"
TRAIN_IMAGE_SIZE = 64
RECALL_SCORE = 0.5
MATCH_IOU = 0.5
MAX_DETECTIONS = 100  # COCOeval's maxDets


def train(output_dir: Path, minutes: float) -> Path:
    """The quick-start recipe at 64 px (evaluation only at the end), stopped after ``minutes``."""
    command = [sys.executable, "-m", "torchdetr.cli", "train", "--config", str(ROOT / "configs" / "quickstart.yaml"),
               "--image_size", str(TRAIN_IMAGE_SIZE), "--num_val", "100", "--eval_every", "1000",
               "--time_budget", str(minutes), "--output_dir", str(output_dir), "--resume", "auto"]
    print("training:", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return output_dir / "checkpoint.pth"


def recall(dataset: SyntheticLargeImages, results: list[dict], min_score: float = RECALL_SCORE) -> float:
    """Share of ground-truth objects matched (same class, IoU ≥ 0.5) by a detection scoring above ``min_score``."""
    from torchvision.ops import box_convert, box_iou

    matched = total = 0
    for image_id in dataset.coco.getImgIds():
        truth = dataset.coco.imgToAnns[image_id]
        found = [r for r in results if r["image_id"] == image_id and r["score"] > min_score]
        total += len(truth)
        if not truth or not found:
            continue
        gt = box_convert(torch.tensor([t["bbox"] for t in truth], dtype=torch.float64), "xywh", "xyxy")
        dt = box_convert(torch.tensor([f["bbox"] for f in found], dtype=torch.float64), "xywh", "xyxy")
        same = torch.tensor([[t["category_id"] == f["category_id"] for f in found] for t in truth])
        matched += int(((box_iou(gt, dt) >= MATCH_IOU) & same).any(dim=1).sum())
    return matched / max(total, 1)


def evaluate(detector: Detector, dataset: SyntheticLargeImages, images: list, tile: int | None, overlap: float,
             min_score: float = RECALL_SCORE) -> dict:
    from torchdetr.cli.predict import coco_results

    results, started = [], time.perf_counter()
    for image_id, image in enumerate(images, start=1):
        detections = detector.predict(image, tile=tile, overlap=overlap)
        by_class: dict[int, list] = {}
        for d in detections:  # sorted by score: COCOeval reads at most the best 100 per image and class
            by_class.setdefault(d.label, []).append(d)
        kept = [d for found in by_class.values() for d in found[:MAX_DETECTIONS]]
        results += coco_results(kept, image_id, f"large_{image_id - 1:04d}.png")
    seconds = (time.perf_counter() - started) / len(images)
    coco_eval, _ = run_coco_eval(dataset.coco, results, "bbox", dataset.coco.getImgIds())
    return dict(ap50=float(coco_eval.stats[1]), ap=float(coco_eval.stats[0]), recall=recall(dataset, results, min_score),
                seconds=seconds, detections=len(results) / len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="trained model (default: train one into outputs/tiling_model)")
    parser.add_argument("--train_minutes", type=float, default=30.0)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=2048, help="side of the large images")
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--batch_size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recall_score", type=float, default=RECALL_SCORE, help="score above which detections count for recall")
    add_output_arguments(parser, RESULTS)
    args = parser.parse_args()
    output = output_path(args.output, args.overwrite)
    torch.set_num_threads(args.threads)

    checkpoint = args.checkpoint or MODEL_DIR / "checkpoint.pth"
    if not checkpoint.is_file():
        checkpoint = train(MODEL_DIR, args.train_minutes)
    dataset = SyntheticLargeImages(args.images, seed=7, image_size=args.image_size)
    from PIL import Image

    images = [Image.fromarray(dataset.render(i)) for i in range(len(dataset))]
    detector = Detector.from_pretrained(checkpoint, "cpu", threshold=0.0, batch_size=args.batch_size)
    rows = [("no tiling (whole image at the model's size)",
             evaluate(detector, dataset, images, None, args.overlap, args.recall_score))]
    print(rows[-1], flush=True)
    for tile in args.tiles:
        rows.append((f"`--tile {tile} --overlap {args.overlap:g}`",
                     evaluate(detector, dataset, images, tile, args.overlap, args.recall_score)))
        print(rows[-1], flush=True)

    objects = len(dataset.coco.getAnnIds())
    base = rows[0][1]
    lines = [
        "# Tiled inference: small objects in large images",
        "",
        "`python benchmarks/tiling.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Machine: {machine_description()}; the cores shared with other jobs; {args.threads} torch threads, CPU.",
        "",
        f"Model: the quick-start recipe (`configs/quickstart.yaml`: resnet18 DC5, hidden 128, 3+3 layers, 20 queries, "
        f"DAB + two-stage + denoising, focal loss) trained from random weights on {TRAIN_IMAGE_SIZE}-px synthetic shapes "
        f"(objects 8–38 px), input size {detector.image_size}/{detector.max_size}; checkpoint `{checkpoint.name}`.",
        f"Data: {args.images} synthetic {args.image_size}×{args.image_size} images, {objects} objects of 12–24 px "
        "(`SyntheticLargeImages(seed=7)`). AP50: pycocotools, threshold 0, 100 detections per image. "
        f"Recall: objects matched (same class, IoU ≥ {MATCH_IOU}) by a detection scoring > {args.recall_score:g}. "
        "Baseline: no tiling, same process.",
        "",
        "| inference | AP50 | AP | recall | × baseline recall | s / image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows:
        ratio = "—" if base["recall"] == 0 and row is not base else (
            "1.00" if row is base else f"{row['recall'] / base['recall']:.1f}")
        lines.append(f"| {name} | {row['ap50']:.3f} | {row['ap']:.3f} | {row['recall']:.3f} | {ratio} | {row['seconds']:.1f} |")
    write_results(output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
