"""Build a ready-to-run model from an official name or a checkpoint file (ours or the original's).

The architecture comes from the checkpoint's ``args`` (training options) when present, and is
otherwise inferred from the state dict's keys and shapes; what could not be inferred (number of
heads, DC5 dilation) falls back to the original defaults with a warning.

The input size travels with the model, as torchvision's weights carry their transforms: official
models carry theirs in ``models.zoo`` (800 / 1333), a checkpoint the validation resize of the run
that wrote it (its ``args`` through the data layer's one size rule, ``data.build.config_validation_size``).
``LoadedModel.image_size`` / ``max_size`` hold it; ``Detector`` and ``detr export`` read it there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..categories import COCO_CATEGORIES, COCO_CATEGORY_NAMES, COCO_PANOPTIC_CATEGORIES, COCO_PANOPTIC_NUM_CLASSES
from ..config import DETRConfig
from ..data.build import config_validation_size
from ..data.transforms import REFERENCE_MAX_SIZE, REFERENCE_SIZE
from ..engine.best import BEST_CHECKPOINT_NAME
from ..engine.checkpoint import CHECKPOINT_NAME, checkpoint_args, evaluated_weights, load_checkpoint, load_model_state
from ..errors import InputFileError, MissingFileError
from ..models.build import build_detector
from ..models.weight_files import is_url
from ..models.zoo import OFFICIAL_MODELS, OfficialModel
from .export_contract import SUFFIXES

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model in eval mode with what is needed to use it.

    ``image_size`` / ``max_size``: the resize the model expects (shorter side, longer-side cap), as
    the original validation recipe (``make_transforms("val", image_size, max_size)``). ``isthing``: for
    models trained on panoptic data, ``{category id: is a thing}`` (None: the COCO convention).
    """

    model: nn.Module
    config: DETRConfig
    category_names: dict[int, str] = field(default_factory=dict)
    source: str = ""
    image_size: int = REFERENCE_SIZE
    max_size: int = REFERENCE_MAX_SIZE
    isthing: dict[int, bool] | None = None


def infer_architecture(state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """Architecture options readable from a DETR state dict (see module docstring for the limits).

    ``num_classes`` is K of the class head (``class_embed.weight`` has K+1 rows). A state dict that
    is not a DETR's is an ``InputFileError`` naming ``source``.
    """
    masks = any(k.startswith("detr.") for k in state_dict)
    prefix = "detr." if masks else ""
    if f"{prefix}input_proj.weight" not in state_dict or f"{prefix}query_embed.weight" not in state_dict:
        keys = ", ".join(list(state_dict)[:3]) or "none"
        raise InputFileError(f"{source}: not a DETR checkpoint: expected the weights of a DETR model (input_proj, "
                             f"query_embed, transformer, …), found {len(state_dict)} entries (e.g. {keys})")

    def get(key: str) -> Tensor:
        try:
            return state_dict[prefix + key]
        except KeyError:
            raise InputFileError(f"{source}: not a DETR state dict (no '{prefix + key}' entry)") from None

    body = prefix + "backbone.0.body."
    bottleneck = f"{body}layer1.0.conv3.weight" in state_dict
    layer3_blocks = len({m.group(1) for k in state_dict if (m := re.match(re.escape(body) + r"layer3\.(\d+)\.", k))})
    resnet = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101"}.get(
        (bottleneck, layer3_blocks)
    )
    if resnet is None:
        raise InputFileError(
            f"{source}: unrecognised backbone (layer3 has {layer3_blocks} blocks, bottleneck={bottleneck})"
        )

    def count_layers(part: str) -> int:
        pattern = re.compile(re.escape(f"{prefix}transformer.{part}.layers.") + r"(\d+)\.")
        return len({m.group(1) for k in state_dict if (m := pattern.match(k))})

    enc_layers = count_layers("encoder")
    query = get("query_embed.weight")
    if f"{body}bn1.running_mean" not in state_dict:
        norm = "group"
    elif f"{body}bn1.num_batches_tracked" in state_dict:
        norm = "batch"
    else:
        norm = "frozen"
    return {
        "backbone": resnet,
        "masks": masks,
        "hidden_dim": int(get("input_proj.weight").shape[0]),
        "variant": "dab" if f"{prefix}ref_point_head.layers.0.weight" in state_dict else "detr",
        "two_stage": f"{prefix}enc_head.class_head.weight" in state_dict,
        "num_queries": int(query.shape[0]),
        "num_classes": int(get("class_embed.weight").shape[0]) - 1,
        "enc_layers": enc_layers,
        "dec_layers": count_layers("decoder"),
        "dim_feedforward": int(get("transformer.decoder.layers.0.linear1.weight").shape[0]),
        "pre_norm": f"{prefix}transformer.encoder.norm.weight" in state_dict,
        "position_embedding": "learned" if f"{prefix}backbone.1.row_embed.weight" in state_dict else "sine",
        "backbone_norm": norm,
    }


def config_from_checkpoint(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> DETRConfig:
    """A ``DETRConfig`` for the model stored in ``checkpoint`` (args first, state dict shapes second).

    Its architecture is ``.model`` (a ``ModelConfig``); see ``DETRConfig.from_checkpoint_args`` for old files.
    """
    state = checkpoint["model"]
    inferred = infer_architecture(state, source)
    values = checkpoint_args(checkpoint)
    missing_facts = [k for k in ("nheads", "dilation") if k not in values]
    for key, value in inferred.items():
        if key in values and values[key] != value and key not in ("backbone_norm",):
            log.warning("%s: args say %s=%r but the weights imply %r; using the weights", source, key, values[key], value)
        values[key] = value
    if missing_facts:
        log.warning("%s has no training args: assuming %s as in the original (not readable from weights)",
                    source, ", ".join(f"{k}={getattr(DETRConfig(), k)!r}" for k in missing_facts))
    values["backbone_weights"] = "none" if values.get("backbone_norm") != "frozen" else "imagenet"
    return DETRConfig.from_checkpoint_args(values, source=source)


def _category_names(checkpoint: Mapping[str, Any], num_classes: int) -> dict[int, str]:
    names = checkpoint.get("categories")
    if isinstance(names, Mapping) and names:
        return {int(k): str(v) for k, v in names.items()}
    if num_classes == COCO_PANOPTIC_NUM_CLASSES:
        return dict(COCO_PANOPTIC_CATEGORIES)
    if num_classes == len(COCO_CATEGORY_NAMES):
        return dict(COCO_CATEGORIES)
    return {}


def _isthing(checkpoint: Mapping[str, Any], categories: Mapping[int, str]) -> dict[int, bool] | None:
    """``{category id: is a thing}`` of a checkpoint trained on panoptic data (its ``thing_ids``), else None."""
    thing_ids = checkpoint.get("thing_ids")
    if not isinstance(thing_ids, (list, tuple)):
        return None
    things = {int(i) for i in thing_ids}
    return {int(cid): cid in things for cid in categories} | dict.fromkeys(things, True)


def _load_official(spec: OfficialModel, path: str | Path, source: str, device: str | torch.device) -> LoadedModel:
    """A released checkpoint with the metadata of ``models.zoo``: architecture, categories, input size."""
    cfg = spec.config()
    model = build_detector(cfg)
    load_model_state(model, load_checkpoint(path)["model"], source=str(path))
    model.to(device).eval()
    return LoadedModel(model=model, config=cfg, category_names=dict(spec.categories), source=source,
                       image_size=spec.image_size, max_size=spec.max_size)


RUN_CHECKPOINTS = (BEST_CHECKPOINT_NAME, CHECKPOINT_NAME)  # what a training run's folder offers, preferred first


def run_checkpoint(name_or_path: str | Path) -> str:
    """A training run's folder → its ``checkpoint_best.pth`` (else ``checkpoint.pth``), said in the log; anything
    else unchanged. Raises ``MissingFileError`` for a folder holding neither."""
    path = Path(name_or_path)
    if not path.is_dir():
        return str(name_or_path)
    for name in RUN_CHECKPOINTS:
        if (path / name).is_file():
            log.info("%s: loading %s", path, path / name)
            return str(path / name)
    raise MissingFileError(f"--model {path} is a folder without {' or '.join(RUN_CHECKPOINTS)} (not a training run's folder)")


def _load_checkpoint_file(source: str) -> dict[str, Any]:
    """``load_checkpoint``, saying so when the unreadable file is an exported model (by its suffix)."""
    try:
        return load_checkpoint(source)
    except InputFileError:
        fmt = SUFFIXES.get(Path(source).suffix.lower())
        if fmt is None or Path(source).suffix.lower() == ".pt":  # .pt is a common checkpoint suffix too
            raise
        raise InputFileError(
            f"{source}: an exported {fmt} file is not a checkpoint: give a training checkpoint (.pth, .safetensors) "
            "or an official model name; run exported files with `detr predict --onnx` (ONNX) or "
            "torchdetr.inference.runtimes.load_exported"
        ) from None


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedModel:
    """Official name (``detr_resnet50``, …; downloads the weights), checkpoint path/URL or a training run's folder
    (its ``checkpoint_best.pth``, else ``checkpoint.pth``: :func:`run_checkpoint`) → model in eval mode.

    A checkpoint trained with ``--ema`` holds the averaged weights under ``ema``; they are the ones
    training evaluated, so they are used unless ``use_ema=False``. Raises ``MissingFileError`` for a
    name that is neither, ``InputFileError`` for an unreadable checkpoint and ``DownloadError`` when
    official weights or a URL cannot be downloaded.
    """
    source = run_checkpoint(name_or_path)
    official_files = {Path(spec.url).name: spec for spec in OFFICIAL_MODELS.values()}
    if source in OFFICIAL_MODELS:
        spec = OFFICIAL_MODELS[source]
        return _load_official(spec, spec.weights_path(), source, device)
    if Path(source).name in official_files and Path(source).is_file():
        # a released file on disk: its architecture (DC5 included, which weights cannot tell) is known
        return _load_official(official_files[Path(source).name], source, source, device)
    if not is_url(source) and not Path(source).exists():
        raise MissingFileError(
            f"--model: {source!r} is neither an official model name ({', '.join(OFFICIAL_MODELS)}) nor a file"
        )
    checkpoint = _load_checkpoint_file(source)
    cfg = config_from_checkpoint(checkpoint, source)
    model = build_detector(cfg)
    state, is_ema = evaluated_weights(checkpoint, use_ema)
    if is_ema:
        log.info("%s: using its EMA weights (the weights training evaluated)", source)
    load_model_state(model, state, source=source)
    model.to(device).eval()
    image_size, max_size = config_validation_size(cfg)
    names = _category_names(checkpoint, cfg.num_classes)
    return LoadedModel(model=model, config=cfg, category_names=names, source=source, image_size=image_size,
                       max_size=max_size, isthing=_isthing(checkpoint, names))
