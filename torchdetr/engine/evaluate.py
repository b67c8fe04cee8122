"""Evaluate a model on a dataset: losses as in training, COCO AP (bbox, segm) through pycocotools, and
panoptic quality (PQ) for mask models on panoptic data.

``evaluate`` is the loop (the original ``engine.evaluate``), used after training epochs;
``evaluate_model`` is a whole evaluation run (``detr eval``, ``detr train --eval``): it builds the
model a config describes, loads its weights and the validation split, runs the loop, prints the
tables and writes the results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import DETRConfig
from ..data.panoptic import get_panoptic_dataset
from ..evaluation.coco import CocoEvaluator
from ..evaluation.panoptic import PanopticEvaluator, PQResult
from ..evaluation.tables import (
    STAT_NAMES,
    format_per_class_table,
    format_pq_per_class_table,
    format_pq_table,
    format_stats_table,
)
from ..losses.build import build_model
from ..losses.set_criterion import SetCriterion
from ..models.build import build_postprocessors
from ..models.postprocess import check_finite_outputs
from . import distributed as du
from .datasets import load_run_data, resolve_num_classes
from .loaders import make_loaders
from .loop import LossAverager, losses_to_host
from .run_log import prepare_output_dir
from .runtime import autocast_context, progress, start_process, to_device, to_float
from .start import load_start_weights, load_weights_to_evaluate

log = logging.getLogger("torchdetr.evaluate")

EVAL_DIR = "eval"  # under the output folder: the COCOeval arrays for PR curves
EVAL_FILE = "latest.pth"
EVAL_FILE_IOU_TYPE = "bbox"  # the IoU type saved to ``eval/latest.pth``, as the original
PANOPTIC_EVAL_DIR = "panoptic_eval"  # under the output folder: predicted PNGs + predictions.json, as the original


@dataclass
class EvalResult:
    """Averaged losses (``loss``, ``class_error``, …), COCO stats per IoU type, per-class AP rows, and PQ
    (mask models on panoptic data)."""

    loss_stats: dict[str, float] = field(default_factory=dict)
    coco_stats: dict[str, list[float]] = field(default_factory=dict)
    per_class: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    evaluator: Any = None
    panoptic: PQResult | None = None

    def test_stats(self) -> dict[str, Any]:
        """What the original's ``evaluate`` returns besides the COCO stats: the averaged losses and, with PQ,
        ``PQ_all``/``PQ_th``/``PQ_st`` = ``{pq, sq, rq, n}`` (``log.txt`` writes them as ``test_*``)."""
        return self.loss_stats | (self.panoptic.log_stats() if self.panoptic is not None else {})

    @property
    def ap(self) -> float:
        """bbox AP @[.50:.95] (NaN when not evaluated)."""
        return self._bbox_stat("AP")

    @property
    def ap50(self) -> float:
        """bbox AP @.50 (NaN when not evaluated)."""
        return self._bbox_stat("AP50")

    def _bbox_stat(self, name: str) -> float:
        stats = self.coco_stats.get("bbox")
        return stats[STAT_NAMES.index(name)] if stats else float("nan")


@dataclass
class ModelEvaluation:
    """What :func:`evaluate_model` did: the model evaluated, its config (classes resolved), the result."""

    model: nn.Module
    config: DETRConfig
    result: EvalResult
    output_dir: Path | None = None
    dataset: Dataset | None = None  # the evaluated split (images for the error report)


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
    ``output_dir/detections_{bbox,segm}.json`` (COCO results) when ``output_dir`` is set.

    A mask model on a panoptic dataset (``data.panoptic.CocoPanoptic``) is also scored by PQ, with the
    panoptic post-processing of the data's things and stuff; its predictions are written to
    ``output_dir/panoptic_eval/`` (PNGs + ``predictions.json``), as the original does.
    """
    model.eval()
    criterion.eval()
    iou_types = tuple(k for k in ("segm", "bbox") if k in postprocessors)
    evaluator = CocoEvaluator(base_ds, iou_types, category_names=category_names)
    panoptic_gt = get_panoptic_dataset(getattr(data_loader, "dataset", None)) if "segm" in postprocessors else None
    panoptic_evaluator = panoptic_postprocess = None
    if panoptic_gt is not None:
        isthing = {cid: category.isthing for cid, category in panoptic_gt.categories.items()}
        panoptic_postprocess = build_postprocessors(cfg, isthing=isthing)["panoptic"]
        panoptic_evaluator = PanopticEvaluator(
            # every process writes the PNGs of its own images (as the original); the main process the JSON
            panoptic_gt, output_dir / PANOPTIC_EVAL_DIR if output_dir is not None else None)
    averager = LossAverager(criterion.weight_dict)
    for samples, targets in progress(data_loader, desc="eval"):
        samples, targets = to_device(samples, targets, device, cfg.channels_last)
        with autocast_context(device, cfg.amp):
            outputs = model(samples)
        outputs = to_float(outputs)
        check_finite_outputs(outputs, cfg.resume if cfg.eval else None)
        loss_dict = criterion(outputs, targets)
        total, values = losses_to_host(criterion.weighted_total(loss_dict), loss_dict)
        averager.update(values, total)
        orig_target_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)  # [B, 2] (H, W)
        results = postprocessors["bbox"](outputs, orig_target_sizes)
        if "segm" in postprocessors:
            target_sizes = torch.stack([t["size"] for t in targets], dim=0)
            results = postprocessors["segm"](results, outputs, orig_target_sizes, target_sizes)
        image_ids = torch.stack([t["image_id"].reshape(()) for t in targets]).tolist()  # one device → host copy
        evaluator.update(dict(zip(image_ids, results)))
        if panoptic_evaluator is not None:  # the original: PNGs at the original size from the processed size
            sizes = torch.stack([t["size"] for t in targets], dim=0)
            panoptic = panoptic_postprocess(outputs, sizes, orig_target_sizes)
            panoptic_evaluator.update(dict(zip(image_ids, panoptic)))

    result = EvalResult(loss_stats=averager.means(device), evaluator=evaluator)
    evaluator.synchronize_between_processes()
    if panoptic_evaluator is not None:
        panoptic_evaluator.synchronize_between_processes()
    if du.is_main_process():
        evaluator.accumulate()
        result.coco_stats = evaluator.summarize()
        result.per_class = {iou_type: evaluator.per_class_ap(iou_type) for iou_type in iou_types}
        if panoptic_evaluator is not None:
            result.panoptic = panoptic_evaluator.summarize()
        if print_tables:
            print_evaluation(result)
        if output_dir is not None:
            write_evaluation_files(evaluator, output_dir, iou_types)
    return result


def write_evaluation_files(evaluator: CocoEvaluator, output_dir: Path, iou_types: Iterable[str]) -> None:
    """``eval/latest.pth`` (COCOeval arrays) and ``detections_{iou_type}.json``, each replaced atomically
    (a kill or a full disk never leaves a partial file; ``OutputError`` names the file)."""
    evaluator.save_eval(output_dir / EVAL_DIR / EVAL_FILE, EVAL_FILE_IOU_TYPE)
    for iou_type in iou_types:
        evaluator.write_results(output_dir / f"detections_{iou_type}.json", iou_type)


def print_evaluation(result: EvalResult) -> None:
    """The 12 COCO stats and the per-class AP of each evaluated IoU type; PQ when evaluated."""
    for iou_type, stats in result.coco_stats.items():
        print(format_stats_table(stats, title=iou_type))
        print(format_per_class_table(result.per_class[iou_type]))
    if result.panoptic is not None:
        print(f"panoptic quality ({result.panoptic.num_images} images)")
        print(format_pq_table(result.panoptic.groups))
        print(format_pq_per_class_table(result.panoptic.per_class))


def evaluate_model(
    cfg: DETRConfig,
    *,
    dataset: Dataset | None = None,
    use_ema: bool = True,
    run_as: Callable[[nn.Module], nn.Module] | None = None,
) -> ModelEvaluation:
    """Evaluate the model ``cfg`` describes on its validation split (``detr eval``, ``detr train --eval``).

    Weights: those of ``cfg.resume`` (its EMA weights when it has them, unless ``use_ema=False``), else
    the start weights the config names (``--pretrained``, ``--frozen_weights``, backbone). Prints the
    COCO tables and, with ``cfg.output_dir``, writes ``eval/latest.pth`` and ``detections_*.json``.
    ``dataset`` replaces building the validation split from ``cfg``. ``run_as`` turns the loaded model into
    the module that is run (``detr eval --precision``: ``inference.optimize``'s fast path over the same weights).
    """
    device, _ = start_process(cfg.device, cfg.seed, cfg.dist_url, cfg.dist_timeout)
    output_dir = prepare_output_dir(cfg.output_dir)
    data = load_run_data(cfg, with_train=False, datasets=None if dataset is None else (None, dataset))
    cfg = resolve_num_classes(cfg, data.coco_gt)
    model, criterion, postprocessors = build_model(cfg)
    weights = load_weights_to_evaluate(model, cfg.resume, use_ema) if cfg.resume else load_start_weights(model, cfg)
    model.to(device)
    criterion.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    log.info("evaluating %s on %d images", weights, len(data.val))
    _, loader_val = make_loaders(None, data.val, cfg)
    runner = model if run_as is None else run_as(model)
    result = evaluate(runner, criterion, postprocessors, loader_val, data.coco_gt, device, cfg,
                      output_dir=output_dir, category_names=data.category_names)
    du.cleanup()
    return ModelEvaluation(model=model, config=cfg, result=result, output_dir=output_dir, dataset=data.val)
