"""Evaluate a model on a dataset: losses as in training, COCO AP (bbox, segm) through pycocotools."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..config import DETRConfig
from ..losses.set_criterion import SetCriterion
from . import distributed as du

log = logging.getLogger("torchdetr.evaluate")


@dataclass
class EvalResult:
    """Averaged losses (``loss``, ``class_error``, …), COCO stats per IoU type, per-class AP rows."""

    loss_stats: dict[str, float] = field(default_factory=dict)
    coco_stats: dict[str, list[float]] = field(default_factory=dict)
    per_class: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    evaluator: Any = None

    @property
    def ap(self) -> float:
        """bbox AP @[.50:.95] (NaN when not evaluated)."""
        return self.coco_stats.get("bbox", [float("nan")])[0]

    @property
    def ap50(self) -> float:
        return self.coco_stats.get("bbox", [float("nan")] * 2)[1]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    criterion: SetCriterion,
    postprocessors: dict[str, nn.Module],
    data_loader: Iterable,
    base_ds: Any,
    device: torch.device,
    cfg: DETRConfig,
    *,
    output_dir: Path | None = None,
    category_names: dict[int, str] | None = None,
    print_tables: bool = True,
) -> EvalResult:
    """Run the model over ``data_loader``; losses + COCO evaluation against ``base_ds`` (pycocotools COCO).

    Writes ``output_dir/eval/latest.pth`` (COCOeval arrays for PR curves) and
    ``output_dir/detections_bbox.json`` (COCO results) when ``output_dir`` is set.
    """
    from ..evaluation.coco import CocoEvaluator, format_per_class_table, format_stats_table
    from .train import LossAverager, _is_interactive, _to_device, autocast_context, to_float

    model.eval()
    criterion.eval()
    iou_types = tuple(k for k in ("segm", "bbox") if k in postprocessors)
    evaluator = CocoEvaluator(base_ds, iou_types, category_names=category_names)
    averager = LossAverager(criterion.weight_dict)
    bar = tqdm(data_loader, desc="eval", disable=not _is_interactive() or not du.is_main_process(), leave=False,
               dynamic_ncols=True)
    for samples, targets in bar:
        samples, targets = _to_device(samples, targets, device, cfg.channels_last)
        with autocast_context(device, cfg.amp):
            outputs = model(samples)
        outputs = to_float(outputs)
        loss_dict = criterion(outputs, targets)
        averager.update(loss_dict, float(criterion.weighted_total(loss_dict)))
        orig_target_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
        results = postprocessors["bbox"](outputs, orig_target_sizes)
        if "segm" in postprocessors:
            target_sizes = torch.stack([t["size"] for t in targets], dim=0)
            results = postprocessors["segm"](results, outputs, orig_target_sizes, target_sizes)
        evaluator.update({int(t["image_id"].item()): r for t, r in zip(targets, results)})

    result = EvalResult(loss_stats=averager.means(device), evaluator=evaluator)
    evaluator.synchronize_between_processes()
    if du.is_main_process():
        evaluator.accumulate()
        result.coco_stats = evaluator.summarize()
        for iou_type in iou_types:
            result.per_class[iou_type] = evaluator.per_class_ap(iou_type)
        if print_tables:
            for iou_type in iou_types:
                print(format_stats_table(result.coco_stats[iou_type], title=iou_type))
                print(format_per_class_table(result.per_class[iou_type]))
        if output_dir is not None:
            (output_dir / "eval").mkdir(parents=True, exist_ok=True)
            evaluator.save_eval(output_dir / "eval" / "latest.pth", "bbox")
            for iou_type in iou_types:
                evaluator.write_results(output_dir / f"detections_{iou_type}.json", iou_type)
    return result
