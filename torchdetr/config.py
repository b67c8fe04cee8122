"""Options of a DETR run: ``ModelConfig`` (the architecture) and ``DETRConfig`` (the whole run).

One name per option: a field name is the original ``main.py`` flag, the ``detr`` command-line flag,
the key of a ``--config`` YAML/JSON file and the key of the ``args`` stored in checkpoints.
``DETRConfig()`` holds exactly the defaults of facebookresearch/detr's ``main.py`` (plus
``num_classes``, 91, which the original derived from ``--dataset_file``), then torchdetr's options.

``DETRConfig`` is flat (``DETRConfig(backbone="resnet18", lr=2e-4)``, ``cfg.lr``) and grouped: each
field carries its group (``GROUPS``). The ``model`` group is a structure of its own: ``ModelConfig``,
the base class of ``DETRConfig``, holds everything needed to rebuild the network and its
post-processing from a state dict; ``cfg.model`` is that part alone, with ``backbone_norm`` resolved.

Both are frozen and validated when built (types, choices, ranges, and the rules between options),
so a config that exists can run; change one with ``cfg.replace(...)``. Values read from text (flags,
config files) are converted from the fields' type objects (``typing.get_type_hints``) and checked
the same way, with one-line ``ConfigError`` messages naming the option, the value and the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import numbers
import operator
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)

# group name → title in ``--help``; every field belongs to one
GROUPS: dict[str, str] = {
    "model": "model (the architecture; stored with the weights and read back from checkpoints)",
    "loss": "loss (matching costs and loss weights)",
    "data": "data",
    "optimisation": "optimisation",
    "weights": "weights (what a training run starts from)",
    "run": "run (where and how the run executes)",
    "techniques": "training techniques (training-only; the saved model stays the plain one)",
}

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
DEVICE_PATTERN = (r"auto|cpu|(cuda|mps|xpu)(:\d+)?", "a device (auto, cpu, cuda, cuda:N, mps)")
DIST_URL_PATTERN = (r"[a-z][a-z0-9+.-]*://.*", "a URL (env://, tcp://HOST:PORT, file://PATH)")
RESUME_AUTO = "auto"  # --resume auto: the newest valid checkpoint of --output_dir
LOGGERS: tuple[str, ...] = ("tensorboard", "mlflow", "wandb")  # --logger: any comma-separated subset, or none
LOGGER_PATTERN = (rf"none|({'|'.join(LOGGERS)})(,({'|'.join(LOGGERS)}))*",
                  f"a comma-separated list of {', '.join(LOGGERS)}, or none")


def _option(
    default: Any,
    help: str,
    group: str,
    *,
    choices: tuple[str, ...] | None = None,
    offered: tuple[str, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    pattern: tuple[str, str] | None = None,
    compat: str | None = None,
) -> Any:
    """A field with its ``--help`` text, group and the rules its value must follow.

    ``choices``: accepted values; ``offered``: the subset users may choose on the command line and
    in config files (the rest only come from checkpoints and official models); ``ge``/``gt``/``le``/
    ``lt``: bounds; ``pattern``: (regular expression the whole text must match, what it describes); ``compat``: why an
    option kept for compatibility with the original is read by no other module (tests list them).
    """
    if group not in GROUPS:
        raise KeyError(f"unknown option group {group!r}")
    metadata = {"help": help, "group": group, "choices": choices, "offered": offered or choices,
                "ge": ge, "gt": gt, "le": le, "lt": lt, "pattern": pattern, "compat": compat}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: what rebuilds the network and its post-processing from a state dict.

    Everything ``build_detector`` and the post-processors read, except training-time switches
    (``lr_backbone`` and ``frozen_weights`` decide which parameters train, ``backbone_weights`` how the
    backbone starts). ``num_classes`` is ``None`` only in a training config (inferred from the data);
    ``backbone_norm`` ``None`` means ``frozen`` here and "from ``backbone_weights``" in ``DETRConfig``.
    """

    backbone: str = _option("resnet50", "backbone", "model",
                            choices=("resnet18", "resnet34", "resnet50", "resnet101"))
    dilation: bool = _option(False, "dilate the last backbone stage (DC5: stride 16)", "model")
    position_embedding: str = _option("sine", "2-D position encoding", "model",
                                      choices=("sine", "learned", "v2", "v3"))
    enc_layers: int = _option(6, "transformer encoder layers", "model", ge=0)
    dec_layers: int = _option(6, "transformer decoder layers", "model", ge=1)
    dim_feedforward: int = _option(2048, "feed-forward width in the transformer", "model", ge=1)
    hidden_dim: int = _option(256, "transformer width (embedding size)", "model", ge=1)
    dropout: float = _option(0.1, "dropout in the transformer", "model", ge=0, lt=1)
    nheads: int = _option(8, "attention heads", "model", ge=1)
    num_queries: int = _option(100, "object queries (maximum detections per image)", "model", ge=1)
    pre_norm: bool = _option(False, "pre-norm transformer layers (LayerNorm before attention)", "model")
    masks: bool = _option(False, "train/run the segmentation (panoptic) mask head", "model")
    aux_loss: bool = _option(True, "auxiliary decoding losses at every decoder layer (--no_aux_loss disables)",
                             "model")
    num_classes: int | None = _option(
        91, "class-head size K = max category id + 1 (detr train: inferred from the data when not given)", "model",
        ge=1)
    backbone_norm: str | None = _option(
        None, "backbone normalisation: frozen (the original), batch or group; default frozen, or batch with "
        "--backbone_weights none", "model", choices=("frozen", "batch", "group"))
    variant: str = _option(
        "detr", "detr (the original) or dab (anchor-box queries refined layer by layer, DAB-DETR style; faster to "
        "train, its own checkpoint layout)", "model", choices=("detr", "dab"))
    two_stage: bool = _option(
        False, "with --variant dab: anchors selected from a dense head on the encoder (two-stage, DINO-style)", "model")
    cls_loss: str = _option(
        "ce", "classification: ce (softmax + eos_coef, the original) or focal (sigmoid focal loss; post-processing "
        "then uses sigmoid scores)", "model", choices=("ce", "focal"))

    def __post_init__(self) -> None:
        for name, hint in field_types(type(self)).items():  # path-like values of text options are kept as text
            if _base_type(hint)[0] is str and isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the option (and value) that cannot work."""
        hints = field_types(type(self))
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), f, hints[f.name])
        if self.hidden_dim % self.nheads:
            raise ConfigError(f"--hidden_dim ({self.hidden_dim}) must be divisible by --nheads ({self.nheads})")
        if self.hidden_dim % 2:
            raise ConfigError(f"--hidden_dim must be even for 2-D position encodings, got {self.hidden_dim}")
        if self.masks and (self.hidden_dim % 128 or (self.hidden_dim + self.nheads) % 8):
            raise ConfigError(
                f"--masks needs --hidden_dim divisible by 128 and hidden_dim + nheads divisible by 8 (the mask head's "
                f"GroupNorm(8) layers), got hidden_dim {self.hidden_dim}, nheads {self.nheads}"
            )
        if self.variant != "detr" and self.masks:
            raise ConfigError(f"--variant {self.variant} is for detection; --masks needs --variant detr")
        if self.two_stage and self.variant != "dab":
            raise ConfigError("--two_stage needs --variant dab (anchors from a dense head on the encoder)")

    @property
    def resolved_backbone_norm(self) -> str:
        """``backbone_norm``, or ``frozen`` (the original) when not given."""
        return self.backbone_norm or "frozen"

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON/YAML serialisable; a checkpoint's ``args``)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> typing.Self:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DETRConfig(ModelConfig):
    """Every option of a DETR run: the architecture (``ModelConfig``) plus loss, data, optimisation, run
    and training techniques. Names and defaults of the original's options are the original's."""

    # --- loss (original main.py) ---
    set_cost_class: float = _option(1, "class weight in the matching cost", "loss", ge=0)
    set_cost_bbox: float = _option(5, "L1 box weight in the matching cost", "loss", ge=0)
    set_cost_giou: float = _option(2, "GIoU weight in the matching cost", "loss", ge=0)
    cls_loss_coef: float = _option(1, "classification loss weight (1 in the original; focal-loss DETRs use 2)", "loss",
                                   ge=0)
    mask_loss_coef: float = _option(1, "focal mask loss weight", "loss", ge=0)
    dice_loss_coef: float = _option(1, "dice mask loss weight", "loss", ge=0)
    bbox_loss_coef: float = _option(5, "L1 box loss weight", "loss", ge=0)
    giou_loss_coef: float = _option(2, "GIoU loss weight", "loss", ge=0)
    eos_coef: float = _option(0.1, "relative weight of the no-object class in the CE loss", "loss", ge=0)
    focal_alpha: float = _option(0.25, "alpha of the focal loss and focal matching cost", "loss", ge=0, le=1)

    # --- data (original main.py, then torchdetr's) ---
    dataset_file: str = _option(
        "coco", "dataset kind: coco (a COCO-format folder), coco_panoptic (a COCO panoptic folder: images in "
        "--coco_path, panoptic files in --coco_panoptic_path, default the same) or synthetic (shapes generated in "
        "memory)", "data", choices=("coco", "coco_panoptic", "synthetic"))
    coco_path: str | None = _option(None, "COCO-format dataset folder (COCO 2017 or generic layout)", "data")
    coco_panoptic_path: str | None = _option(
        None, "COCO panoptic folder (annotations/panoptic_*.json and the segment PNGs), with --dataset_file "
        "coco_panoptic; default: --coco_path", "data")
    remove_difficult: bool = _option(
        False, "no effect, accepted for compatibility: the original main.py ignores it too (COCO marks no "
        "'difficult' objects)", "data", compat="no effect, as in the original; config_from_args warns when it is set")
    image_size: int = _option(
        800, "shortest image side of the validation recipe; training scales follow in proportion", "data", ge=1)
    max_size: int | None = _option(None, "longest image side (default 1333 * image_size / 800)", "data", ge=1)
    num_train: int = _option(2000, "synthetic dataset: training images", "data", ge=1)
    num_val: int = _option(200, "synthetic dataset: validation images", "data", ge=1)
    train_recipe: str = _option(
        "original", "training augmentation: original (flip, multi-scale, random crop) or small (flip, scales "
        "0.75-1.25 × image_size, no crop: for small images and short runs); --augment replaces it", "data",
        choices=("original", "small"))
    augment: str = _option(
        "", "training augmentation from a YAML file listing torchvision.transforms.v2 operations, or a preset name "
        "(original, small; see `detr data preview`); '' = --train_recipe", "data")
    skip_data_check: bool = _option(False, "do not check the dataset for problems before training", "data")

    # --- optimisation (original main.py, then torchdetr's) ---
    lr: float = _option(1e-4, "learning rate of the transformer and heads", "optimisation", ge=0)
    lr_backbone: float = _option(1e-5, "learning rate of the backbone (<= 0 freezes it)", "optimisation")
    batch_size: int = _option(2, "images per batch (per process)", "optimisation", ge=1)
    weight_decay: float = _option(1e-4, "AdamW weight decay", "optimisation", ge=0)
    epochs: int = _option(300, "number of training epochs", "optimisation", ge=1)
    start_epoch: int = _option(0, "first epoch (overridden by --resume)", "optimisation", ge=0)
    lr_drop: int = _option(200, "epoch at which the step schedule divides the LR by 10", "optimisation", ge=1)
    clip_max_norm: float = _option(0.1, "gradient clipping max norm (0 disables)", "optimisation", ge=0)
    lr_schedule: str = _option("step", "learning-rate schedule: step (÷10 at --lr_drop) or cosine", "optimisation",
                               choices=("step", "cosine"))
    warmup_iters: int = _option(0, "linear learning-rate warm-up iterations (0 = none)", "optimisation", ge=0)
    min_lr_ratio: float = _option(0.01, "cosine schedule: final LR as a fraction of the initial LR", "optimisation",
                                  ge=0, le=1)
    ema: bool = _option(False, "keep an exponential moving average of the weights; evaluate and save it",
                        "optimisation")
    ema_decay: float = _option(0.9998, "EMA decay per iteration", "optimisation", gt=0, lt=1)
    eval_every: int = _option(1, "evaluate every N epochs (and after the last one)", "optimisation", ge=1)
    time_budget: float = _option(0.0, "stop training after this many minutes (0 = no limit), then evaluate",
                                 "optimisation", ge=0)
    best_metric: str = _option(
        "AP", "what checkpoint_best.pth is best at: AP, AP50 (bbox, higher is better), loss (test loss, lower is "
        "better) or PQ (panoptic runs); the EMA model's with --ema", "optimisation",
        choices=("AP", "AP50", "loss", "PQ"))
    patience: int = _option(
        0, "early stopping: stop after this many evaluations without an improvement of --best_metric (0 = never)",
        "optimisation", ge=0)
    min_delta: float = _option(
        0.0, "early stopping and checkpoint_best.pth: the smallest change of --best_metric that counts as an "
        "improvement", "optimisation", ge=0)

    # --- weights a training run starts from (original main.py, then torchdetr's) ---
    resume: str = _option(
        "", "checkpoint path or URL to resume from (model, optimizer, schedule, epoch, random state), or auto: the "
        "newest valid checkpoint in --output_dir, or a fresh start when there is none (the same command can be "
        "re-run after any crash)", "weights")
    frozen_weights: str | None = _option(
        None, "detection checkpoint whose weights are loaded and frozen (segmentation stage 2, with --masks)", "weights")
    pretrained: str = _option(
        "", "checkpoint (path/URL/official name) whose weights start the training (fine-tuning)", "weights")
    backbone_weights: str = _option(
        "imagenet", "backbone initialisation for training: imagenet, none, or a file path", "weights")

    # --- run (original main.py, then torchdetr's) ---
    output_dir: str = _option("", "where to write checkpoints and logs ('' = nowhere)", "run")
    overwrite: bool = _option(
        False, "replace the earlier run in --output_dir (its checkpoints, log.txt, eval/, tensorboard/, detections); "
        "without it a folder holding a run is refused unless the run is resumed", "run")
    device: str = _option("auto", "device: auto (cuda when available, else cpu), cpu, cuda, cuda:N, mps", "run",
                          pattern=DEVICE_PATTERN)
    seed: int = _option(42, "random seed", "run", ge=0)
    eval: bool = _option(False, "only evaluate (with --resume for the weights)", "run")
    num_workers: int = _option(2, "data loader worker processes", "run", ge=0)
    world_size: int = _option(
        1, "number of distributed processes: informational, torchrun decides (--nproc_per_node); a value that "
        "differs from torchrun's WORLD_SIZE is refused", "run", ge=1,
        compat="informational, as in the original; config_from_args checks it against WORLD_SIZE")
    dist_url: str = _option("env://", "url used to set up distributed training", "run", pattern=DIST_URL_PATTERN)
    dist_timeout: float = _option(
        30.0, "minutes a process of a distributed run waits for the others in a collective operation before it stops "
        "with an error (a process died or hangs)", "run", gt=0)
    amp: str = _option("none", "mixed precision: none, bf16 or fp16", "run", choices=("none", "bf16", "fp16"))
    channels_last: bool = _option(False, "channels-last memory format for the backbone (faster convolutions on CPU)",
                                  "run")
    fast_train: bool = _option(
        False, "faster training step with the same losses: frozen batch norms folded into the backbone's convolutions, "
        "attention without its unused weights, all decoder layers matched and scored at once, channels-last "
        "convolutions (implies --channels_last)", "run")
    print_freq: int = _option(50, "log a progress line every N iterations when not on a terminal", "run", ge=1)
    logger: str = _option(
        "tensorboard", "experiment trackers, comma-separated: tensorboard, mlflow, wandb, or none (mlflow and wandb "
        "are extras: pip install 'torchdetr[mlflow]'; they read their usual environment variables, e.g. "
        "MLFLOW_TRACKING_URI, WANDB_MODE)", "run", pattern=LOGGER_PATTERN)
    report: bool = _option(
        True, "at the end of training, write the error report (confusion matrix, precision/recall/F1, worst images) "
        "of the best model into --output_dir/report", "run")

    # --- training techniques for fast convergence (opt-in; defaults = the original) ---
    num_groups: int = _option(1, "query groups trained with their own one-to-one matching (Group DETR; 1 = off)",
                              "techniques", ge=1)
    dn_groups: int = _option(0, "noised copies of the ground truth fed as denoising queries (DN-DETR; 0 = off)",
                             "techniques", ge=0)
    dn_box_noise: float = _option(0.4, "denoising: box jitter, as a fraction of the box size", "techniques", ge=0)
    dn_label_noise: float = _option(0.2, "denoising: probability of flipping a query's label", "techniques",
                                    ge=0, le=1)
    dense_head: bool = _option(
        False, "dense one-to-many supervision of the encoder cells by a training-only head (Co-DETR idea)",
        "techniques")

    # ------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ConfigError`` naming the option (and value) that cannot work."""
        super().validate()
        if not self.eval and self.epochs <= self.start_epoch:
            raise ConfigError(f"--epochs {self.epochs} with --start_epoch {self.start_epoch}: nothing to train "
                              f"(epochs is the last epoch + 1, not a count from start_epoch)")
        if self.resume == RESUME_AUTO and not self.output_dir:
            raise ConfigError("--resume auto continues the run in --output_dir: give --output_dir")
        if self.resume == RESUME_AUTO and self.overwrite:
            raise ConfigError("--resume auto continues the run in --output_dir, --overwrite replaces it: choose one")
        if self.coco_panoptic_path is not None and self.dataset_file != "coco_panoptic":
            raise ConfigError(f"--coco_panoptic_path {self.coco_panoptic_path!r} is read with --dataset_file coco_panoptic, "
                              f"not {self.dataset_file}")
        if self.frozen_weights is not None and not self.masks:
            raise ConfigError(f"--frozen_weights {self.frozen_weights!r} is only for segmentation training (--masks)")
        if self.masks and (self.num_groups > 1 or self.dn_groups > 0 or self.dense_head):
            raise ConfigError("--num_groups / --dn_groups / --dense_head are for detection training; not with --masks")
        if self.two_stage and self.num_groups > 1:
            raise ConfigError("--two_stage needs --num_groups 1 (its dense head already gives one-to-many supervision)")
        if self.best_metric == "PQ" and self.dataset_file != "coco_panoptic":
            raise ConfigError(f"--best_metric PQ is the panoptic quality of panoptic runs (--dataset_file coco_panoptic); "
                              f"this run (--dataset_file {self.dataset_file}) is evaluated with COCO AP: choose AP, AP50 "
                              "or loss")
        if self.augment and self.train_recipe != "original":
            raise ConfigError(f"--augment {self.augment} and --train_recipe {self.train_recipe} both define the training "
                              "augmentation: choose one (the small recipe is --augment small)")

    @property
    def model(self) -> ModelConfig:
        """The architecture part alone, with ``backbone_norm`` resolved."""
        values = {name: getattr(self, name) for name in model_field_names()}
        values["backbone_norm"] = self.resolved_backbone_norm
        return ModelConfig(**values)

    @classmethod
    def from_model_config(cls, model: ModelConfig, **options: Any) -> DETRConfig:
        """A run of the architecture ``model``, with ``options`` for the rest (defaults otherwise)."""
        return cls(**{name: getattr(model, name) for name in model_field_names()}, **options)

    @property
    def resolved_backbone_norm(self) -> str:
        """``backbone_norm`` or its automatic choice (frozen with pretrained weights, batch without)."""
        if self.backbone_norm is not None:
            return self.backbone_norm
        return "batch" if self.backbone_weights == "none" else "frozen"

    @property
    def channels_last_training(self) -> bool:
        """Whether training runs the model and its images channels-last: ``--channels_last``, or ``--fast_train``
        (channels-last convolutions are part of the fast step: measured 1.26× → 1.41× of the faithful step)."""
        return self.channels_last or self.fast_train

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> DETRConfig:
        """Build from option names → values as a user writes them (text converted, checked; see ``check_user_values``)."""
        return cls(**check_user_values(values, source=source))

    @classmethod
    def from_file(cls, path: str | Path) -> DETRConfig:
        """Read a YAML or JSON file of option names → values."""
        return cls.from_dict(read_config_file(path), source=str(path))

    @classmethod
    def from_checkpoint_args(cls, args: Mapping[str, Any], *, source: str = "checkpoint") -> DETRConfig:
        """The config described by the ``args`` stored in a checkpoint (ours, or the original's Namespace).

        The architecture must be valid (``ConfigError`` naming ``source``). The rest is best effort, so
        that files of older versions and forks load: unknown names (the original's ``distributed``,
        ``gpu``, ``rank``…) are ignored, values this version refuses are dropped with a warning, and the
        device of the machine that trained is not carried over. Stored options that contradict each
        other are dropped (those the error names) rather than refusing the file.
        """
        known = {k: v for k, v in args.items() if k in field_names() and k not in _NOT_CARRIED}
        architecture = {k: known.pop(k) for k in model_field_names() if k in known}
        hints = field_types(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        options: dict[str, Any] = {}
        for name, value in known.items():
            try:
                options[name] = check_value(name, value, fields[name], hints[name])
            except ConfigError as err:
                log.warning("%s: ignoring its stored option: %s", source, err)
        while True:  # stored options that contradict each other: drop those the error names, keep the rest
            try:
                return cls(**architecture, **options)
            except ConfigError as err:
                named = set(re.findall(r"--(\w+)", str(err))) & set(options)
                if not named:
                    raise ConfigError(f"{source}: the stored architecture cannot be built: {err}") from None
                log.warning("%s: ignoring its stored %s: %s", source, ", ".join(sorted(named)), err)
                options = {k: v for k, v in options.items() if k not in named}


_NOT_CARRIED = frozenset({"device"})  # where the stored run executed, not what it trained


# ----------------------------------------------------------------------------------------------
# fields, types and values
# ----------------------------------------------------------------------------------------------
@cache
def field_types(config_class: type[ModelConfig] = DETRConfig) -> dict[str, Any]:
    """Field name → type object (``int``, ``float | None``…), from ``typing.get_type_hints``."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {k: v for k, v in typing.get_type_hints(config_class).items() if k in names}


@cache
def field_names() -> frozenset[str]:
    """Names of all ``DETRConfig`` options."""
    return frozenset(f.name for f in dataclasses.fields(DETRConfig))


@cache
def model_field_names() -> tuple[str, ...]:
    """Names of the architecture options (``ModelConfig``'s fields), in declaration order."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig))


def _base_type(hint: Any) -> tuple[Any, bool]:
    """``(T, optional)`` for ``T`` or ``T | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported option type {hint}")
        return args[0], True
    return hint, False


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ValueError("is not true or false")


def _to_int(value: Any) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    try:
        number = _to_float(value) if isinstance(value, str | float) else math.nan  # "1e3", 2.0
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise ValueError("is not an integer")
    return int(number)


def _to_float(value: Any) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError("is not a number") from None
    else:
        raise ValueError("is not a number")
    if not math.isfinite(number):
        raise ValueError("is not a finite number")
    return number


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):  # YAML `output_dir: 2024`
        return str(value)
    raise ValueError("is not text")


_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def coerce_value(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` (``bool``, ``int``, ``float``, ``str``, optionally ``| None``).

    Text is converted (``"1e-4"`` → 1e-4, ``"false"`` → False, ``"3"`` → 3); values already of the type
    pass; integers pass as floats, integral floats as integers; non-finite numbers are refused.
    ``None`` passes only for ``T | None``. Raises ``ValueError`` with the reason (the caller names the
    option and the source).
    """
    base, optional = _base_type(hint)
    if base not in _CONVERTERS:
        raise TypeError(f"unsupported option type {hint}")
    if value is None:
        if optional:
            return None
        raise ValueError("is not allowed to be empty (null)")
    return _CONVERTERS[base](value)


def _is_instance(value: Any, hint: Any) -> bool:
    base, optional = _base_type(hint)
    if value is None:
        return optional
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, base)


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
_BOUNDS = (("ge", ">=", operator.ge), ("gt", ">", operator.gt), ("le", "<=", operator.le), ("lt", "<", operator.lt))


def check_value(name: str, value: Any, f: dataclasses.Field, hint: Any, *, source: str | None = None,
                user: bool = False) -> Any:
    """``value`` of option ``name`` converted (text from ``source``) and checked against the field's rules.

    ``source`` (a file name) switches text conversion on and is named in the message; ``user`` limits
    choices to those offered to users. Raises ``ConfigError``: ``FILE: name: VALUE problem`` or
    ``--name: VALUE problem``.
    """
    where = f"{source}: {name}: {value!r}" if source else f"--{name}: {value!r}"
    if source is not None:
        try:
            value = coerce_value(value, hint)
        except ValueError as err:
            raise ConfigError(f"{where} {err}") from None
    elif not _is_instance(value, hint):
        base, optional = _base_type(hint)
        raise ConfigError(f"{where} is not {_TYPE_WORDS.get(base, base)}{' (or None)' if optional else ''}")
    if value is None:
        return value
    rules = f.metadata
    choices = rules.get("offered") if user else rules.get("choices")
    if choices and value not in choices:
        hidden = set(rules.get("choices") or ()) - set(choices)
        reason = " (not available yet)" if value in hidden else ""
        raise ConfigError(f"{where} is not one of {', '.join(choices)}{reason}")
    bounds = [(rules[key], word, holds) for key, word, holds in _BOUNDS if rules.get(key) is not None]
    if not all(holds(value, limit) for limit, _, holds in bounds):
        raise ConfigError(f"{where} must be {' and '.join(f'{word} {limit:g}' for limit, word, _ in bounds)}")
    if rules.get("pattern") and not re.fullmatch(rules["pattern"][0], value):
        raise ConfigError(f"{where} is not {rules['pattern'][1]}")
    return value


def check_user_values(values: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Option values a user wrote (a config file): names known, text converted, each value checked.

    Raises ``ConfigError`` naming ``source``, the option and the value.
    """
    unknown = sorted(set(values) - field_names())
    if unknown:
        raise ConfigError(
            f"{source}: unknown option(s) {', '.join(map(str, unknown))}; valid names are the original main.py flags "
            f"and `detr train --help`'s, e.g. {', '.join(sorted(field_names())[:6])}, …"
        )
    hints = field_types(DETRConfig)
    fields = {f.name: f for f in dataclasses.fields(DETRConfig)}
    return {name: check_value(name, value, fields[name], hints[name], source=source, user=True)
            for name, value in values.items()}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML (``.yaml``/``.yml``) or JSON config file into a dict of raw values, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--config: config file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config file: {_one_line(err)}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON: {_one_line(err)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of option names to values, "
                          f"not {type(values).__name__}")
    return values


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def _flag_type(hint: Any) -> Any:
    """argparse ``type=`` for an option: text → the field's type (from its type object)."""
    base, _ = _base_type(hint)

    def parse(text: str) -> Any:
        try:
            return coerce_value(text, base)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} {err}") from None

    parse.__name__ = getattr(base, "__name__", str(base))
    return parse


def select_options(
    *, groups: Iterable[str] | None = None, include: Iterable[str] = (), exclude: Iterable[str] = (),
    config_class: type[ModelConfig] = DETRConfig,
) -> list[dataclasses.Field]:
    """The fields of ``config_class`` in ``groups`` (all when ``None``) plus ``include``, minus ``exclude``."""
    groups = None if groups is None else set(groups)
    include, exclude = set(include), set(exclude)
    names = {f.name for f in dataclasses.fields(config_class)}
    if unknown := sorted((include | exclude) - names):
        raise KeyError(f"{config_class.__name__} has no option(s) {', '.join(unknown)}")
    if unknown := sorted((groups or set()) - set(GROUPS)):
        raise KeyError(f"no option group(s) {', '.join(unknown)}; groups are {', '.join(GROUPS)}")
    return [f for f in dataclasses.fields(config_class)
            if f.name not in exclude and (groups is None or f.metadata["group"] in groups or f.name in include)]


def add_config_arguments(
    parser: argparse.ArgumentParser,
    *,
    groups: Iterable[str] | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    defaults_to_none: bool = True,
    config_class: type[ModelConfig] = DETRConfig,
) -> None:
    """Add one ``--name`` flag per option, under one ``--help`` section per group.

    A command shows the options it uses: ``groups`` (names of ``GROUPS``; all when ``None``), plus the
    fields named in ``include``, minus those in ``exclude``. E.g. ``detr eval`` takes
    ``groups=("data", "run"), include=("batch_size", "resume"), exclude=("eval",)``.

    Flag types come from the fields' type objects; ``choices`` are those offered to users. With
    ``defaults_to_none`` every flag defaults to ``None`` so that callers can tell the flags a user gave
    from the defaults (``config_from_args`` merges file and flags). Boolean options are switches
    (``--masks``, or ``--masks false``); ``--no_aux_loss`` is kept as in the original.
    """
    hints = field_types(config_class)
    sections: dict[str, argparse._ArgumentGroup] = {}
    for f in select_options(groups=groups, include=include, exclude=exclude, config_class=config_class):
        group_name = f.metadata["group"]
        section = sections.get(group_name) or sections.setdefault(
            group_name, parser.add_argument_group(GROUPS[group_name]))
        help_text = f"{f.metadata['help']} (default: {f.default!r})"
        default = None if defaults_to_none else f.default
        if f.name == "aux_loss":
            section.add_argument("--no_aux_loss", dest="aux_loss", action="store_const", const=False,
                                 default=default, help="disable the auxiliary decoding losses")
            section.add_argument("--aux_loss", dest="aux_loss", type=_flag_type(bool), default=default,
                                 help=argparse.SUPPRESS)
            continue
        base, _ = _base_type(hints[f.name])
        if base is bool:
            section.add_argument(f"--{f.name}", nargs="?", const=True, type=_flag_type(bool), default=default,
                                 help=help_text)
            continue
        section.add_argument(f"--{f.name}", type=_flag_type(base), default=default, help=help_text,
                             choices=f.metadata["offered"])


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options a user gave: ``--config FILE``'s (converted, checked), then the flags on the command line."""
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        values.update(check_user_values(read_config_file(config_file), source=str(config_file)))
    for name in field_names():
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    return values


def config_from_args(args: argparse.Namespace, base: DETRConfig | None = None) -> DETRConfig:
    """Merge: defaults (or ``base``) ← ``--config FILE`` ← flags given on the command line; validated."""
    values = given_options(args)
    check_compatibility_options(values)
    start = base.to_dict() if base is not None else {}
    start.update(values)
    return DETRConfig(**start)


def check_compatibility_options(values: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """The original's options that only this module reads, given by a user: refuse or warn, never ignore.

    ``world_size``: informational; the number of processes is torchrun's ``WORLD_SIZE`` (1 without
    torchrun), and a different given value is refused. ``remove_difficult``: no effect (as in the
    original), a warning says so. (``coco_panoptic_path`` is refused by ``DETRConfig.validate``.)
    """
    environ = os.environ if environ is None else environ
    world_size = values.get("world_size")
    if world_size is not None:
        actual = int(environ.get("WORLD_SIZE", "1") or 1)
        if world_size != actual:
            launched = f"torchrun started {actual}" if "WORLD_SIZE" in environ else "this is a single process, 1"
            raise ConfigError(
                f"--world_size {world_size}: {launched} (the launcher decides: torchrun --nproc_per_node N -m "
                f"torchdetr train ...); omit --world_size or give {actual}"
            )
    if values.get("remove_difficult"):
        log.warning("--remove_difficult has no effect (as in the original main.py): COCO annotations mark no "
                    "'difficult' objects, and `detr data convert` keeps VOC's difficult boxes as ordinary ones")
