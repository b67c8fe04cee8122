"""Datasets from a ``DETRConfig``: ``build_dataset(image_set, cfg)`` and the ground truth for evaluation."""

from __future__ import annotations

from torch.utils.data import Dataset

from ..config import DETRConfig
from ..errors import ConfigError
from .augment import augment_transforms
from .coco import CocoDetection, get_coco_api
from .layout import resolve_panoptic_split, resolve_split
from .panoptic import CocoPanoptic
from .synthetic import NATIVE_SIZE, SyntheticShapes, split_seed
from .transforms import REFERENCE_SIZE, make_transforms, validation_size

__all__ = ["DATASET_FILES", "build_dataset", "config_validation_size", "get_coco_api", "synthetic_image_size"]

DATASET_FILES: tuple[str, ...] = ("coco", "coco_panoptic", "synthetic")


def synthetic_image_size(cfg: DETRConfig) -> int:
    """Image size of the synthetic dataset: ``cfg.image_size``, or the native 128 px when it is the default 800."""
    return NATIVE_SIZE if cfg.image_size == REFERENCE_SIZE else cfg.image_size


def config_validation_size(cfg: DETRConfig) -> tuple[int, int]:
    """``(shorter side, longer-side cap)`` that ``cfg``'s validation transforms resize to (:func:`.transforms.validation_size`).

    The synthetic dataset's size is :func:`synthetic_image_size`; others use ``cfg.image_size``.
    """
    image_size = synthetic_image_size(cfg) if cfg.dataset_file == "synthetic" else cfg.image_size
    return validation_size(image_size, cfg.max_size)


def _transforms(image_set: str, image_size: int, cfg: DETRConfig):
    if image_set == "train" and cfg.augment:
        return augment_transforms(cfg.augment, image_size, cfg.max_size)
    return make_transforms(image_set, image_size, cfg.max_size, cfg.train_recipe)


def build_dataset(image_set: str, cfg: DETRConfig) -> Dataset:
    """The ``image_set`` ("train" or "val") split of ``cfg.dataset_file`` with the DETR transforms.

    - ``"coco"``: the folder ``cfg.coco_path`` in the COCO 2017 or the generic layout
      (:func:`.layout.resolve_split`), with masks when ``cfg.masks``.
    - ``"coco_panoptic"``: the panoptic split of ``cfg.coco_panoptic_path`` (default ``cfg.coco_path``) with the
      images of ``cfg.coco_path`` (:func:`.layout.resolve_panoptic_split`), masks when ``cfg.masks``.
    - ``"synthetic"``: ``cfg.num_train`` / ``cfg.num_val`` ``SyntheticShapes`` images with seed
      ``split_seed(cfg.seed, image_set)``, so train and val differ. When ``cfg.image_size`` is the
      default 800 the images, and the transform recipe, use the synthetic native size of 128 px.

    Transforms are ``make_transforms(image_set, image_size, cfg.max_size, cfg.train_recipe)``, or for training
    with ``cfg.augment`` the file's (:func:`.augment.augment_transforms`).
    """
    if image_set not in ("train", "val"):
        raise ConfigError(f"unknown image set {image_set!r}: expected 'train' or 'val'")
    if cfg.dataset_file == "coco":
        if not cfg.coco_path:
            raise ConfigError("--coco_path is required with --dataset_file coco (a COCO-format dataset folder)")
        files = resolve_split(cfg.coco_path, image_set)
        transforms = _transforms(image_set, cfg.image_size, cfg)
        return CocoDetection(files.images_dir, files.ann_file, transforms=transforms, return_masks=cfg.masks)
    if cfg.dataset_file == "coco_panoptic":
        if not cfg.coco_path:
            raise ConfigError("--coco_path is required with --dataset_file coco_panoptic (the image folder; the panoptic "
                              "files are read from --coco_panoptic_path, by default the same folder)")
        files = resolve_panoptic_split(cfg.coco_panoptic_path or cfg.coco_path, image_set, images_root=cfg.coco_path)
        transforms = make_transforms(image_set, cfg.image_size, cfg.max_size, cfg.train_recipe)
        return CocoPanoptic(files.images_dir, files.png_dir, files.ann_file, transforms=transforms,
                            return_masks=cfg.masks)
    if cfg.dataset_file == "synthetic":
        image_size = synthetic_image_size(cfg)
        return SyntheticShapes(
            cfg.num_train if image_set == "train" else cfg.num_val,
            seed=split_seed(cfg.seed, image_set),
            image_size=image_size,
            transforms=_transforms(image_set, image_size, cfg),
            return_masks=cfg.masks,
        )
    raise ConfigError(
        f"--dataset_file {cfg.dataset_file!r} is not supported here; expected one of {', '.join(DATASET_FILES)}"
    )
