"""The data of a run: the splits a config names, checked before use, their ground truth and classes."""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ..config import DETRConfig
from ..data.build import build_dataset, get_coco_api
from ..data.coco import category_ids, category_names, implied_num_classes
from ..data.panoptic import get_panoptic_dataset
from ..errors import ConfigError, DataError

log = logging.getLogger("torchdetr.train")

MAX_IMAGES_TO_CHECK = 20_000  # start-up data check opens image headers only below this many files


class DataCheckFailed(DataError):
    """The dataset has problems that would make training crash or silently wrong."""


@dataclass
class RunData:
    """The datasets of a run (``train`` is None when only evaluating) and the validation ground truth."""

    train: Dataset | None
    val: Dataset
    coco_gt: COCO  # pycocotools ground truth of ``val``
    category_names: dict[int, str]  # category id → name, from ``coco_gt``
    thing_ids: list[int] | None = None  # panoptic data: the categories that are things (the others are stuff)

    def checkpoint_entries(self) -> dict[str, Any]:
        """What checkpoints record of the data: ``categories`` (id → name) and, for panoptic data, ``thing_ids``
        (which the panoptic post-processing of a loaded model needs)."""
        entries: dict[str, Any] = {"categories": self.category_names}
        if self.thing_ids is not None:
            entries["thing_ids"] = self.thing_ids
        return entries


def load_run_data(
    cfg: DETRConfig, *, with_train: bool = True, datasets: tuple[Dataset | None, Dataset] | None = None
) -> RunData:
    """The validation split (and the training split when ``with_train``) that ``cfg`` names, checked first.

    ``datasets`` (train, val) replaces building them (tests, benchmarks); it is not checked.
    """
    if datasets is None:
        splits = ("train", "val") if with_train else ("val",)
        if cfg.dataset_file in ("coco", "coco_panoptic") and not cfg.skip_data_check:
            check_data(cfg, splits)
        dataset_val = build_dataset("val", cfg)
        dataset_train = build_dataset("train", cfg) if with_train else None
    else:
        dataset_train, dataset_val = datasets
    coco_gt = get_coco_api(dataset_val)
    panoptic = get_panoptic_dataset(dataset_val)
    return RunData(train=dataset_train if with_train else None, val=dataset_val, coco_gt=coco_gt,
                   category_names=category_names(coco_gt),
                   thing_ids=sorted(panoptic.thing_ids) if panoptic is not None else None)


def check_data(cfg: DETRConfig, splits: tuple[str, ...] = ("train", "val")) -> None:
    """Run ``detr data check`` on the ``splits`` of ``cfg.coco_path`` (panoptic: ``cfg.coco_panoptic_path``); raise
    ``DataCheckFailed`` (one line: the first error, how many more, and the command that lists them) when a split
    has errors."""
    from ..data.check import check_dataset, check_panoptic_dataset
    from ..data.coco import resolve_coco_layout
    from ..data.layout import resolve_panoptic_split

    if not cfg.coco_path:
        raise ConfigError(f"--coco_path is required with --dataset_file {cfg.dataset_file} (a COCO-format dataset folder)")
    for split in splits:
        png_dir = None
        if cfg.dataset_file == "coco_panoptic":
            files = resolve_panoptic_split(cfg.coco_panoptic_path or cfg.coco_path, split, images_root=cfg.coco_path)
            images_dir, ann_file, png_dir = files.images_dir, files.ann_file, files.png_dir
        else:
            images_dir, ann_file = resolve_coco_layout(cfg.coco_path, split)
        # reading every image header (and segment PNG) of a huge dataset (COCO: 118k) at each start is too slow
        read_images = sum(1 for _ in zip(images_dir.iterdir(), range(MAX_IMAGES_TO_CHECK + 1))) <= MAX_IMAGES_TO_CHECK
        if not read_images:
            log.info("data check of %s: more than %d images, image files not opened (run `detr data check`)",
                     ann_file, MAX_IMAGES_TO_CHECK)
        command = data_check_command(ann_file, images_dir, png_dir)
        if png_dir is not None:
            report = check_panoptic_dataset(ann_file, png_dir, images_dir, check_images=read_images)
        else:
            report = check_dataset(ann_file, images_dir, check_images=read_images)
        if not report.ok:
            first, more = report.errors[0], len(report.errors) - 1
            others = f" and {more} more error(s)" if more else ""
            raise DataCheckFailed(f"{first.one_line()} ({first.kind}{others} in the {split} data {ann_file}: "
                                  f"`{command}` lists them; fix them or pass --skip_data_check)")
        if report.warnings:
            log.warning("%s: %d warning(s) from the data check (run `%s` for details)", ann_file, len(report.warnings),
                        command)


def data_check_command(ann_file: Path, images_dir: Path, png_dir: Path | None = None) -> str:
    """The ``detr data check`` command line that reports on exactly these files (a dataset folder would not do:
    the panoptic files of ``--coco_panoptic_path`` are not under ``--coco_path``)."""
    words = ["detr", "data", "check", str(ann_file), "--images", str(images_dir)]
    return shlex.join(words + (["--png_dir", str(png_dir)] if png_dir is not None else []))


def resolve_num_classes(cfg: DETRConfig, coco_gt: COCO) -> DETRConfig:
    """Fill ``num_classes`` from the data when ``None`` (:func:`~torchdetr.data.coco.implied_num_classes`: the largest
    category id + 1, the original's 250 for COCO panoptic); refuse a class head too small for the ids."""
    implied = implied_num_classes(coco_gt)
    largest = max(category_ids(coco_gt))
    if cfg.num_classes is None:
        rule = "largest category id %d + 1" if implied == largest + 1 else "the original's for COCO panoptic; largest id %d"
        log.info(f"num_classes = %d ({rule}, from the annotations)", implied, largest)
        return cfg.replace(num_classes=implied)
    if cfg.num_classes <= largest:
        raise ConfigError(f"--num_classes {cfg.num_classes} is too small: the dataset has category id {largest}, "
                          f"so num_classes must be at least {largest + 1} (largest id + 1); omit --num_classes to infer it")
    return cfg
