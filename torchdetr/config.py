"""One flat configuration dataclass whose field names are the original ``main.py`` flags.

``DETRConfig()`` holds exactly the defaults of facebookresearch/detr's ``main.py``
(plus ``num_classes``, 91, which the original derived from ``--dataset_file``),
followed by the options torchdetr adds. The command line is generated from the
fields (``add_config_arguments``), so a flag and a config-file key always have the
same name, and ``--config FILE`` (YAML or JSON) accepts the same names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _opt(default: Any, help: str, group: str, **extra: Any) -> Any:
    """A dataclass field carrying its command-line help text and group."""
    metadata = {"help": help, "group": group, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DETRConfig:
    """Every option of a DETR run. Names and defaults of the first block are the original's."""

    # --- optimisation (original main.py) ---
    lr: float = _opt(1e-4, "learning rate of the transformer and heads", "optimisation")
    lr_backbone: float = _opt(1e-5, "learning rate of the backbone (<= 0 freezes it)", "optimisation")
    batch_size: int = _opt(2, "images per batch (per process)", "optimisation")
    weight_decay: float = _opt(1e-4, "AdamW weight decay", "optimisation")
    epochs: int = _opt(300, "number of training epochs", "optimisation")
    lr_drop: int = _opt(200, "epoch at which the step schedule divides the LR by 10", "optimisation")
    clip_max_norm: float = _opt(0.1, "gradient clipping max norm (0 disables)", "optimisation")

    # --- model (original main.py) ---
    frozen_weights: str | None = _opt(
        None, "detection checkpoint whose weights are loaded and frozen (segmentation stage 2)", "model"
    )
    backbone: str = _opt(
        "resnet50", "backbone: resnet18, resnet34, resnet50 or resnet101", "model",
        choices=("resnet18", "resnet34", "resnet50", "resnet101"),
    )
    dilation: bool = _opt(False, "dilate the last backbone stage (DC5: stride 16)", "model")
    position_embedding: str = _opt(
        "sine", "2-D position encoding", "model", choices=("sine", "learned", "v2", "v3")
    )
    enc_layers: int = _opt(6, "transformer encoder layers", "model")
    dec_layers: int = _opt(6, "transformer decoder layers", "model")
    dim_feedforward: int = _opt(2048, "feed-forward width in the transformer", "model")
    hidden_dim: int = _opt(256, "transformer width (embedding size)", "model")
    dropout: float = _opt(0.1, "dropout in the transformer", "model")
    nheads: int = _opt(8, "attention heads", "model")
    num_queries: int = _opt(100, "object queries (maximum detections per image)", "model")
    pre_norm: bool = _opt(False, "pre-norm transformer layers (LayerNorm before attention)", "model")
    masks: bool = _opt(False, "train/run the segmentation (panoptic) mask head", "model")
    aux_loss: bool = _opt(
        True, "auxiliary decoding losses at every decoder layer (--no_aux_loss disables)", "model"
    )
    num_classes: int | None = _opt(
        91, "class-head size K = max category id + 1 (detr train: inferred from the data when not given)", "model"
    )

    # --- matcher (original main.py) ---
    set_cost_class: float = _opt(1, "class weight in the matching cost", "matcher")
    set_cost_bbox: float = _opt(5, "L1 box weight in the matching cost", "matcher")
    set_cost_giou: float = _opt(2, "GIoU weight in the matching cost", "matcher")

    # --- loss coefficients (original main.py) ---
    cls_loss_coef: float = _opt(1, "classification loss weight (1 in the original; focal-loss DETRs use 2)", "loss")
    mask_loss_coef: float = _opt(1, "focal mask loss weight", "loss")
    dice_loss_coef: float = _opt(1, "dice mask loss weight", "loss")
    bbox_loss_coef: float = _opt(5, "L1 box loss weight", "loss")
    giou_loss_coef: float = _opt(2, "GIoU loss weight", "loss")
    eos_coef: float = _opt(0.1, "relative weight of the no-object class in the CE loss", "loss")

    # --- data (original main.py) ---
    dataset_file: str = _opt("coco", "dataset kind: coco, coco_panoptic or synthetic", "data")
    coco_path: str | None = _opt(None, "COCO-format dataset folder (COCO 2017 or generic layout)", "data")
    coco_panoptic_path: str | None = _opt(None, "COCO panoptic folder", "data")
    remove_difficult: bool = _opt(False, "drop 'difficult' objects (kept for compatibility)", "data")

    # --- run (original main.py) ---
    output_dir: str = _opt("", "where to write checkpoints and logs ('' = nowhere)", "run")
    device: str = _opt("auto", "device: auto (cuda when available, else cpu), cpu, cuda, cuda:N", "run")
    seed: int = _opt(42, "random seed", "run")
    resume: str = _opt("", "checkpoint path or URL to resume from", "run")
    start_epoch: int = _opt(0, "first epoch (overridden by --resume)", "run")
    eval: bool = _opt(False, "only evaluate (with --resume for the weights)", "run")
    num_workers: int = _opt(2, "data loader worker processes", "run")
    world_size: int = _opt(1, "number of distributed processes", "run")
    dist_url: str = _opt("env://", "url used to set up distributed training", "run")

    # --- torchdetr additions ---
    image_size: int = _opt(
        800, "shortest image side of the validation recipe; training scales follow in proportion", "data"
    )
    max_size: int | None = _opt(None, "longest image side (default 1333 * image_size / 800)", "data")
    num_train: int = _opt(2000, "synthetic dataset: training images", "data")
    num_val: int = _opt(200, "synthetic dataset: validation images", "data")
    backbone_weights: str = _opt(
        "imagenet", "backbone initialisation for training: imagenet, none, or a file path", "model"
    )
    backbone_norm: str | None = _opt(
        None,
        "backbone normalisation: frozen (the original), batch or group; "
        "default frozen, or batch with --backbone_weights none",
        "model",
        choices=("frozen", "batch", "group"),
    )
    pretrained: str = _opt(
        "", "checkpoint (path/URL/official name) whose weights start the training (fine-tuning)", "run"
    )
    amp: str = _opt("none", "mixed precision: none, bf16 or fp16", "run", choices=("none", "bf16", "fp16"))
    channels_last: bool = _opt(False, "channels-last memory format for the backbone (faster convolutions on CPU)", "run")
    eval_every: int = _opt(1, "evaluate every N epochs (and after the last one)", "run")
    time_budget: float = _opt(0.0, "stop training after this many minutes (0 = no limit), then evaluate", "run")
    skip_data_check: bool = _opt(False, "do not check the dataset for problems before training", "run")
    print_freq: int = _opt(50, "log a progress line every N iterations when not on a terminal", "run")

    # --- training techniques for fast convergence (opt-in; defaults = the original) ---
    variant: str = _opt(
        "detr", "model: detr (the original) or dab (anchor-box queries refined layer by layer, DAB-DETR style; "
        "faster to train, its own checkpoint layout)", "techniques", choices=("detr", "dab"))
    two_stage: bool = _opt(
        False, "with --variant dab: anchors selected from a dense head on the encoder (two-stage, DINO-style)",
        "techniques")
    cls_loss: str = _opt(
        "ce", "classification loss: ce (softmax + eos_coef, the original) or focal (sigmoid focal loss)", "techniques",
        choices=("ce", "focal"),
    )
    focal_alpha: float = _opt(0.25, "alpha of the focal loss and focal matching cost", "techniques")
    num_groups: int = _opt(1, "query groups trained with their own one-to-one matching (Group DETR; 1 = off)",
                           "techniques")
    dn_groups: int = _opt(0, "noised copies of the ground truth fed as denoising queries (DN-DETR; 0 = off)",
                          "techniques")
    dn_box_noise: float = _opt(0.4, "denoising: box jitter, as a fraction of the box size", "techniques")
    dn_label_noise: float = _opt(0.2, "denoising: probability of flipping a query's label", "techniques")
    train_recipe: str = _opt(
        "original", "training augmentation: original (flip, multi-scale, random crop) or small (flip, scales "
        "0.75-1.25 × image_size, no crop: for small images and short runs)", "techniques", choices=("original", "small"))
    dense_head: bool = _opt(
        False, "dense one-to-many supervision of the encoder cells by a training-only head (Co-DETR idea)",
        "techniques")
    lr_schedule: str = _opt("step", "learning-rate schedule: step (÷10 at --lr_drop) or cosine", "techniques",
                            choices=("step", "cosine"))
    warmup_iters: int = _opt(0, "linear learning-rate warm-up iterations (0 = none)", "techniques")
    min_lr_ratio: float = _opt(0.01, "cosine schedule: final LR as a fraction of the initial LR", "techniques")
    ema: bool = _opt(False, "keep an exponential moving average of the weights; evaluate and save it", "techniques")
    ema_decay: float = _opt(0.9998, "EMA decay per iteration", "techniques")

    # ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON/YAML serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> DETRConfig:
        """Build from a mapping of field names; unknown names raise a ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown option(s) {', '.join(unknown)}; "
                f"valid names are the original main.py flags, e.g. {', '.join(sorted(known)[:8])}, …"
            )
        return cls(**dict(values))

    @classmethod
    def from_file(cls, path: str | Path) -> DETRConfig:
        """Read a YAML or JSON file of option names → values."""
        return cls.from_dict(read_config_file(path), source=str(path))

    def replace(self, **changes: Any) -> DETRConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option whose value cannot work."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ValueError(f"--{f.name}: {value!r} is not one of {', '.join(choices)}")
        positive = ("hidden_dim", "nheads", "num_queries", "dec_layers", "dim_feedforward", "batch_size",
                    "image_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.enc_layers < 0:
            raise ValueError(f"--enc_layers must be >= 0, got {self.enc_layers}")
        if self.hidden_dim % self.nheads:
            raise ValueError(
                f"--hidden_dim ({self.hidden_dim}) must be divisible by --nheads ({self.nheads})"
            )
        if self.position_embedding in ("sine", "v2", "learned", "v3") and self.hidden_dim % 2:
            raise ValueError(f"--hidden_dim must be even for 2-D position encodings, got {self.hidden_dim}")
        if self.num_classes is not None and self.num_classes <= 0:
            raise ValueError(f"--num_classes must be positive, got {self.num_classes}")
        if self.masks and (self.hidden_dim % 128 or (self.hidden_dim + self.nheads) % 8):
            raise ValueError(
                f"--masks needs --hidden_dim divisible by 128 and hidden_dim + nheads divisible by 8 (the mask head's "
                f"GroupNorm(8) layers), got hidden_dim {self.hidden_dim}, nheads {self.nheads}"
            )
        if self.variant != "detr" and self.masks:
            raise ValueError(f"--variant {self.variant} is for detection; --masks needs --variant detr")
        if self.two_stage and (self.variant != "dab" or self.num_groups > 1):
            raise ValueError("--two_stage needs --variant dab and --num_groups 1 (its dense head already gives "
                             "one-to-many supervision)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")

    @property
    def resolved_max_size(self) -> int:
        """``max_size`` or the original 1333 scaled by ``image_size / 800``."""
        if self.max_size is not None:
            return self.max_size
        return round(1333 * self.image_size / 800)

    @property
    def resolved_backbone_norm(self) -> str:
        """``backbone_norm`` or its automatic choice (frozen with pretrained weights, batch without)."""
        if self.backbone_norm is not None:
            return self.backbone_norm
        return "batch" if self.backbone_weights == "none" else "frozen"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML (``.yaml``/``.yml``) or JSON config file into a dict, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as err:
        raise ValueError(f"{path}: cannot parse config file: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of option names to values")
    return values


def _bool_arg(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def add_config_arguments(
    parser: argparse.ArgumentParser, *, exclude: Sequence[str] = (), defaults_to_none: bool = True
) -> None:
    """Add one ``--name`` flag per ``DETRConfig`` field, grouped as in the dataclass.

    With ``defaults_to_none`` every flag defaults to ``None`` so that callers can tell the
    flags a user gave from the defaults (``config_from_args`` merges file and flags).
    Boolean options are switches (``--masks``); ``--no_aux_loss`` is kept as in the original.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(DETRConfig):
        if f.name in exclude:
            continue
        group_name = f.metadata.get("group", "other")
        group = groups.setdefault(group_name, parser.add_argument_group(group_name))
        default_text = f" (default: {f.default!r})" if f.default is not dataclasses.MISSING else ""
        help_text = f.metadata.get("help", "") + default_text
        default = None if defaults_to_none else f.default
        if f.name == "aux_loss":
            group.add_argument("--no_aux_loss", dest="aux_loss", action="store_const", const=False,
                               default=default, help="disable the auxiliary decoding losses")
            group.add_argument("--aux_loss", dest="aux_loss", type=_bool_arg, default=default,
                               help=argparse.SUPPRESS)
            continue
        if f.type in ("bool", bool):
            group.add_argument(f"--{f.name}", nargs="?", const=True, type=_bool_arg, default=default,
                               help=help_text)
            continue
        kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
        group.add_argument(f"--{f.name}", type=kind, default=default, help=help_text,
                           choices=f.metadata.get("choices"))


def config_from_args(args: argparse.Namespace, base: DETRConfig | None = None) -> DETRConfig:
    """Merge: defaults ← ``--config FILE`` ← flags given on the command line."""
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        values.update(read_config_file(config_file))
    names = {f.name for f in dataclasses.fields(DETRConfig)}
    for name in names:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    start = base.to_dict() if base is not None else {}
    start.update(values)
    return DETRConfig.from_dict(start, source=config_file or "command line")
