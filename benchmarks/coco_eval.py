"""COCO evaluation speed: ``detr eval --ann --results`` (default backend) vs pycocotools' own COCOeval.

The ground truth is BCCD's three splits (real boxes) repeated to about 2,500 images with new ids; the
detections are the ground truth with seeded noise (moved boxes, wrong classes, misses, false
positives), ~100 per image as DETR writes at threshold 0. Each way is run ``--repeats`` times,
interleaved; the table gives the median wall time and the ratio against pycocotools' COCOeval
(evaluate + accumulate + summarize on the same files) measured in the same process, and checks that
the 12 stats agree.

    python benchmarks/coco_eval.py [--copies 7] [--repeats 3] [--output benchmarks/results/coco_eval.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine_description  # benchmarks/machine.py (this script's folder is on sys.path)
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from results_file import add_output_arguments, output_path, write_results

from torchdetr.evaluation.checks import resolve_backend
from torchdetr.evaluation.results_file import evaluate_results_file

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "annotations"
DETECTIONS_PER_IMAGE = 100


def ground_truth(copies: int) -> dict:
    """BCCD's splits merged and repeated ``copies`` times (new image and annotation ids)."""
    splits = [json.loads((BCCD / f"instances_{s}.json").read_text()) for s in ("train", "val", "test")]
    images = [im for s in splits for im in s["images"]]
    annotations = [a for s in splits for a in s["annotations"]]
    out = {"images": [], "annotations": [], "categories": splits[0]["categories"]}
    offset = max(im["id"] for im in images) + 1
    for copy in range(copies):
        out["images"] += [im | {"id": im["id"] + copy * offset} for im in images]
        out["annotations"] += [a | {"id": len(out["annotations"]) + i + 1, "image_id": a["image_id"] + copy * offset}
                               for i, a in enumerate(annotations)]
    return out


def detections(gt: dict, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    categories = [c["id"] for c in gt["categories"]]
    out = []
    for image in gt["images"]:
        found = []
        for a in by_image.get(image["id"], []):
            if rng.random() < 0.9:
                x, y, w, h = a["bbox"]
                found.append([x + rng.normal(0, 0.1) * w, y + rng.normal(0, 0.1) * h, w * rng.lognormal(0, 0.1),
                              h * rng.lognormal(0, 0.1), a["category_id"] if rng.random() > 0.1 else rng.choice(categories)])
        while len(found) < DETECTIONS_PER_IMAGE:
            w, h = rng.uniform(4, image["width"] / 3), rng.uniform(4, image["height"] / 3)
            found.append([rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h), w, h,
                          rng.choice(categories)])
        out += [{"image_id": image["id"], "category_id": int(c), "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                 "score": round(float(rng.uniform(0.01, 1)), 5)} for x, y, w, h, c in found]
    return out


def pycocotools_eval(ann: Path, results: Path) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        coco_eval = COCOeval(gt, gt.loadRes(str(results)), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return [float(s) for s in coco_eval.stats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    add_output_arguments(parser, Path(__file__).parent / "results" / "coco_eval.md")
    args = parser.parse_args()
    output = output_path(args.output, args.overwrite)
    with tempfile.TemporaryDirectory() as tmp:
        gt = ground_truth(args.copies)
        ann, results = Path(tmp) / "gt.json", Path(tmp) / "dets.json"
        ann.write_text(json.dumps(gt))
        dets = detections(gt)
        results.write_text(json.dumps(dets))
        ways = {
            "pycocotools COCOeval (baseline)": lambda: pycocotools_eval(ann, results),
            "detr eval --backend pycocotools": lambda: evaluate_results_file(ann, results, backend="pycocotools").stats,
            f"detr eval (default: auto → {resolve_backend('auto')})":
                lambda: evaluate_results_file(ann, results, backend="auto").stats,
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        stats: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, run in ways.items():
                start = time.perf_counter()
                stats[name] = run()
                times[name].append(time.perf_counter() - start)
    baseline_name = next(iter(ways))
    baseline = statistics.median(times[baseline_name])
    rows = ["| way | median s | speed vs COCOeval | max \\|Δ stat\\| |", "|---|---:|---:|---:|"]
    for name in ways:
        median = statistics.median(times[name])
        diff = max(abs(a - b) for a, b in zip(stats[name], stats[baseline_name]))
        rows.append(f"| {name} | {median:.2f} | {baseline / median:.2f}× | {diff:.1e} |")
    text = "\n".join([
        "# COCO evaluation speed",
        "",
        f"`python benchmarks/coco_eval.py --copies {args.copies} --repeats {args.repeats}`: {len(gt['images'])} images "
        f"(BCCD ×{args.copies}), {len(dets)} detections, bbox; median of {args.repeats} interleaved runs, each from the "
        "files on disk (loading included).",
        "",
        f"- machine: {machine_description()}; load average before the table: "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        "",
        *rows,
        "",
    ])
    write_results(output, text)


if __name__ == "__main__":
    main()
