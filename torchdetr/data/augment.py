"""Training augmentation from a YAML file (``--augment FILE.yaml`` or a preset name): torchvision ``v2`` operations.

A file lists the operations applied in order to each training sample, each with its arguments::

    reference_size: 800            # optional: sizes below are pixels at --image_size 800 and scale with it
    train:
      - RandomHorizontalFlip: {p: 0.5}
      - ColorJitter: {brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.02}
      - RandomChoice:               # one of the lists, chosen at random (p: optional weights)
          transforms:
            - [RandomResize: {sizes: [480, 512, 544], max_size: auto}]
            - [RandomResize: {sizes: [400, 500, 600]}, RandomSizeCrop: {min_size: 384, max_size: 600}]
      - RandomApply: {transforms: [GaussianBlur: {kernel_size: 5}], p: 0.3}

Operations (:data:`OPERATIONS`): photometric ``ColorJitter``, ``RandomPhotometricDistort``, ``RandomGrayscale``,
``GaussianBlur``, ``RandomAutocontrast``, ``RandomEqualize``; geometric ``RandomHorizontalFlip``,
``RandomVerticalFlip``, ``RandomZoomOut``, ``RandomIoUCrop``, ``RandomAffine``, ``RandomPerspective``,
``RandomRotation``; the original recipe's ``RandomResize`` (``sizes``, ``max_size``: a number, ``auto`` for the
validation cap of ``--image_size``, or absent) and ``RandomSizeCrop`` (``min_size``, ``max_size``); the
containers ``RandomChoice`` and ``RandomApply``. Arguments are those of the torchvision class
(``torchvision.transforms.v2.<Name>``), checked when the file is read: an unknown operation or argument,
or a value the class refuses, is a one-line ``ConfigError`` naming the file, the operation and the argument.

Boxes (``tv_tensors.BoundingBoxes``) and masks (``tv_tensors.Mask``) follow the pixels. After each geometric
torchvision operation boxes are clipped to the image, and objects whose box has no area left (it left the
image) are dropped from every per-object entry, and counted (:attr:`Augmentation.dropped`); ``area``
becomes the clipped box area, as after the original's crop. The presets ``original`` (the original
recipe, same draws as ``--train_recipe original``) and ``small`` (``--train_recipe small``) are files in
``torchdetr/data/augment_presets/`` that show the format.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_area
from torchvision.transforms import v2

from ..errors import ConfigError, MissingFileError
from .transforms import (
    DROP_COUNTS,
    DetectionTransforms,
    RandomResize,
    RandomSizeCrop,
    Sample,
    Target,
    _scaled,
    keep_objects,
    validation_size,
)

log = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).with_name("augment_presets")
PHOTOMETRIC: tuple[str, ...] = ("ColorJitter", "RandomPhotometricDistort", "RandomGrayscale", "GaussianBlur",
                                "RandomAutocontrast", "RandomEqualize")
GEOMETRIC: tuple[str, ...] = ("RandomHorizontalFlip", "RandomVerticalFlip", "RandomZoomOut", "RandomIoUCrop",
                              "RandomAffine", "RandomPerspective", "RandomRotation")
RECIPE: tuple[str, ...] = ("RandomResize", "RandomSizeCrop")  # the original's sample-level steps
CONTAINERS: tuple[str, ...] = ("RandomChoice", "RandomApply")
OPERATIONS: tuple[str, ...] = PHOTOMETRIC + GEOMETRIC + RECIPE + CONTAINERS
AUTO = "auto"  # RandomResize max_size: the validation cap of --image_size
LIST_ARGUMENTS = {"RandomResize": {"sizes"}}  # arguments holding sizes (scaled with reference_size)
SIZE_ARGUMENTS = {"RandomResize": {"sizes", "max_size"}, "RandomSizeCrop": {"min_size", "max_size"}}


def presets() -> list[str]:
    """Names of the shipped presets (``original``, ``small``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_augment(value: str) -> Path:
    """``--augment``: a preset name or a YAML file path → the file. Raises ``MissingFileError``."""
    path = Path(value)
    if value in presets() and not path.is_file():
        return PRESETS_DIR / f"{value}.yaml"
    if not path.is_file():
        raise MissingFileError(f"--augment {value}: no such file, and not a preset ({', '.join(presets())})")
    return path


class Augmentation:
    """A training pipeline read from a file: ``(image, target) → (image, target)`` in pixels (wrapped sample).

    ``dropped`` counts the objects removed because their box left the image, ``seen`` the objects that
    entered the pipeline (counts of this process; DataLoader workers keep their own).
    """

    def __init__(self, steps: Sequence[Callable[..., Sample]], source: str) -> None:
        self.pipeline = v2.Compose(list(steps))
        self.source = source
        self.dropped = 0
        self.seen = 0

    def __call__(self, image: Any, target: Target | None = None) -> Sample:
        if target is not None and "boxes" in target:
            self.seen += len(target["boxes"])
        DROP_COUNTS.append(0)
        try:
            image, target = self.pipeline(image, target)
        finally:
            self.dropped += DROP_COUNTS.pop()
        return image, target

    def __repr__(self) -> str:
        return f"Augmentation({self.source}: {self.pipeline!r})"


class ClipToImage(torch.nn.Module):
    """Run a torchvision geometric operation, then clip the boxes to the image and drop the objects whose box has
    no area left (from every per-object entry); ``area`` scales with each box's area (unchanged by a flip)."""

    def __init__(self, operation: Callable[..., Any]) -> None:
        super().__init__()
        self.operation = operation

    def forward(self, image: Any, target: Target | None = None) -> Sample:
        before = box_area(target["boxes"].as_subclass(Tensor).float()) if target is not None and "boxes" in target else None
        image, target = self.operation(image, target)
        if before is None:
            return image, target
        target = dict(target)
        boxes = v2.functional.clamp_bounding_boxes(target["boxes"])
        plain = boxes.as_subclass(Tensor)
        keep = (plain[:, 2] > plain[:, 0]) & (plain[:, 3] > plain[:, 1])
        target["boxes"] = boxes
        if "area" in target:
            target["area"] = target["area"] * box_area(plain.float()) / before.clamp(min=torch.finfo(torch.float32).tiny)
        if not bool(keep.all()):
            target = keep_objects(target, keep)
        return image, target


@dataclass
class _Context:
    source: str
    image_size: int
    max_size: int
    factor: float  # image_size / reference_size


def load_augmentation(value: str, image_size: int, max_size: int | None = None) -> Augmentation:
    """Read ``--augment`` (a preset name or a YAML file) into an :class:`Augmentation` for ``--image_size``.

    Raises ``ConfigError`` naming the file, the operation and the argument for anything the file gets wrong.
    """
    import yaml

    path = resolve_augment(value)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{source}: cannot read the augmentation file: {' '.join(str(err).split())}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("train"), list):
        raise ConfigError(f"{source}: an augmentation file holds 'train': a list of operations (see "
                          f"{PRESETS_DIR / 'small.yaml'})")
    unknown = sorted(set(data) - {"train", "reference_size"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(str, unknown))} (expected train, reference_size)")
    image_size, cap = validation_size(image_size, max_size)
    reference = data.get("reference_size", image_size)
    if isinstance(reference, bool) or not isinstance(reference, int | float) or reference <= 0:
        raise ConfigError(f"{source}: reference_size: {reference!r} is not a positive number of pixels")
    context = _Context(source, image_size, cap, image_size / reference)
    steps = _build_list(data["train"], context, "train")
    if not _mentions(data["train"], "RandomResize"):
        log.warning("%s: no RandomResize: training images keep their own size (validation resizes to %d px)", source,
                    image_size)
    return Augmentation(steps, source)


def augment_transforms(value: str, image_size: int, max_size: int | None = None) -> DetectionTransforms:
    """The training transforms of ``--augment``: :func:`load_augmentation` inside ``DetectionTransforms`` (the
    normalised ``[3, H, W]`` image and (cx, cy, w, h) boxes the model takes; see ``transforms.make_transforms``)."""
    return DetectionTransforms(load_augmentation(value, image_size, max_size))


def _mentions(value: Any, name: str) -> bool:
    if isinstance(value, Mapping):
        return name in value or any(_mentions(v, name) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, name) for v in value)
    return False


def _build_list(items: Any, context: _Context, where: str) -> list[Callable[..., Sample]]:
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{context.source}: {where}: expected a non-empty list of operations, got {items!r}")
    return [_build(item, context, f"{where}[{i}]") for i, item in enumerate(items)]


def _build(item: Any, context: _Context, where: str) -> Callable[..., Sample]:
    """One operation ``{Name: {argument: value}}`` (or a bare ``Name``)."""
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, Mapping) or len(item) != 1:
        raise ConfigError(f"{context.source}: {where}: an operation is one 'Name: {{arguments}}' entry, got {item!r}")
    (name, arguments), = item.items()
    if name not in OPERATIONS:
        raise ConfigError(f"{context.source}: {where}: unknown operation {name!r}; known: {', '.join(OPERATIONS)}")
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, Mapping):
        raise ConfigError(f"{context.source}: {name}: arguments must be a mapping 'argument: value', got {arguments!r}")
    arguments = dict(arguments)
    if name == "RandomChoice":
        return _random_choice(arguments, context, where)
    if name == "RandomApply":
        return _random_apply(arguments, context, where)
    cls = RandomResize if name == "RandomResize" else RandomSizeCrop if name == "RandomSizeCrop" else getattr(v2, name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for argument in arguments:
        if argument not in accepted:
            raise ConfigError(f"{context.source}: {name}: unknown argument {argument!r}; {name} takes "
                              f"{', '.join(accepted) or 'no arguments'}")
    if name in SIZE_ARGUMENTS:
        arguments = _sizes(name, arguments, context)
    try:
        operation = cls(**arguments)
    except (TypeError, ValueError) as err:
        given = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
        raise ConfigError(f"{context.source}: {name}({given}): {' '.join(str(err).split())}") from None
    return ClipToImage(operation) if name in GEOMETRIC else operation


def _sizes(name: str, arguments: dict[str, Any], context: _Context) -> dict[str, Any]:
    """Sizes in pixels at ``reference_size``, scaled to ``--image_size`` as the original recipe is (``_scaled``)."""
    out = dict(arguments)
    for key in SIZE_ARGUMENTS[name]:
        if key not in out or out[key] is None:
            continue
        value = out[key]
        if name == "RandomResize" and key == "max_size" and value == AUTO:
            out[key] = context.max_size
            continue
        values = value if key in LIST_ARGUMENTS.get(name, ()) else [value]
        if (key in LIST_ARGUMENTS.get(name, ()) and (not isinstance(value, list) or not value)) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values):
            kind = "a non-empty list of positive pixel sizes" if key in LIST_ARGUMENTS.get(name, ()) else "a positive size"
            extra = " or auto" if key == "max_size" and name == "RandomResize" else ""
            raise ConfigError(f"{context.source}: {name}: {key}: {value!r} is not {kind}{extra}")
        scaled = _scaled(values, context.factor)
        out[key] = scaled if key in LIST_ARGUMENTS.get(name, ()) else scaled[0]
    return out


def _options(arguments: dict[str, Any], context: _Context, where: str, name: str) -> Any:
    """The ``transforms`` argument (taken out of ``arguments``) of the container ``name`` at ``where`` in the file;
    anything but ``transforms`` and ``p`` is refused."""
    options = arguments.pop("transforms", None)
    if options is None:
        raise ConfigError(f"{context.source}: {where}: {name}: missing argument 'transforms' (a list)")
    unknown = sorted(set(arguments) - {"p"})
    if unknown:
        raise ConfigError(f"{context.source}: {where}: {name}: unknown argument {unknown[0]!r}; {name} takes transforms, p")
    return options


def _random_choice(arguments: dict[str, Any], context: _Context, where: str) -> Callable[..., Sample]:
    options = _options(arguments, context, where, "RandomChoice")
    if not isinstance(options, list) or not options:
        raise ConfigError(f"{context.source}: {where}: RandomChoice: transforms: expected a non-empty list of operation lists")
    built = [v2.Compose(_build_list(option if isinstance(option, list) else [option], context,
                                    f"{where}.transforms[{i}]")) for i, option in enumerate(options)]
    try:
        return v2.RandomChoice(built, p=arguments.get("p"))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{context.source}: {where}: RandomChoice: p: {' '.join(str(err).split())}") from None


def _random_apply(arguments: dict[str, Any], context: _Context, where: str) -> Callable[..., Sample]:
    options = _options(arguments, context, where, "RandomApply")
    p = arguments.get("p", 0.5)
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
        raise ConfigError(f"{context.source}: {where}: RandomApply: p: {p!r} is not a probability in [0, 1]")
    return v2.RandomApply(_build_list(options, context, f"{where}.transforms"), p=float(p))


@dataclass
class PreviewSample:
    """One panel of a preview: the image (PIL, RGB), its boxes [N, 4] xyxy pixels, their category ids [N], a caption."""

    image: Any
    boxes: Tensor
    labels: Tensor
    caption: str


def preview_samples(dataset: Any, augmentation: Augmentation, images: int, repeats: int) -> list[list[PreviewSample]]:
    """Rows of panels: for ``images`` images of ``dataset`` (spread over it; untransformed samples ``(image, target)``
    in pixels), the original, then ``repeats`` draws of ``augmentation`` (torch's random generator)."""
    from torchvision.transforms.v2 import functional as F

    from .transforms import prepare_sample

    count = min(images, len(dataset))
    indices = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)}) if count else []
    rows = []
    for index in indices:
        image, target = prepare_sample(*dataset[index])
        height, width = F.get_size(image)
        row = [PreviewSample(image, target["boxes"].as_subclass(Tensor), target["labels"],
                             f"original {width}x{height}, {_boxes(len(target['boxes']))}")]
        for draw in range(1, repeats + 1):
            dropped = augmentation.dropped
            out, augmented = augmentation(image, target)
            height, width = F.get_size(out)
            lost = augmentation.dropped - dropped
            caption = f"#{draw} {width}x{height}, {_boxes(len(augmented['boxes']))}" + (f" ({lost} dropped)" if lost else "")
            row.append(PreviewSample(out if not isinstance(out, Tensor) else F.to_pil_image(out),
                                     augmented["boxes"].as_subclass(Tensor), augmented["labels"], caption))
        rows.append(row)
    return rows


def _boxes(count: int) -> str:
    return f"{count} box{'' if count == 1 else 'es'}"
