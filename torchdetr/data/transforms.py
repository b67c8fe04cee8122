"""Detection transforms: the original DETR recipe on ``torchvision.transforms.v2`` and ``tv_tensors``.

A sample is ``(image, target)``: a PIL image (or a ``[3, H, W]`` tensor) and the target dict that
``data.coco`` produces (``boxes`` [N, 4] xyxy pixels, ``labels``, ``area``, ``iscrowd``, ``image_id``,
``orig_size``, ``size``, optionally ``masks`` [N, H, W]). Inside the pipeline the boxes are a
``tv_tensors.BoundingBoxes`` and the masks a ``tv_tensors.Mask``, so torchvision moves them with the
image. ``make_transforms`` returns a ``DetectionTransforms`` that wraps, runs the recipe, then converts
the image to a normalised float tensor and the boxes to normalised (cx, cy, w, h), as the model expects.

The geometry follows facebookresearch/detr ``datasets/transforms.py`` exactly: the resize size rule
(``resize_shape``), ``area`` rescaled on resize and recomputed from the clipped boxes on crop, and
objects whose box is empty after a crop removed together with their labels, masks, area and iscrowd.
Random draws use torch's generator (``torch.manual_seed`` makes them reproducible; DataLoader workers
are seeded by torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_area
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import ConfigError
from .io import to_rgb

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# The original recipe, written for a validation size of 800 px; make_transforms scales them.
REFERENCE_SIZE = 800  # the original validation resize: shorter side 800 px ...
REFERENCE_MAX_SIZE = 1333  # ... longer side at most 1333 px
TRAIN_SCALES: tuple[int, ...] = tuple(range(480, 801, 32))  # 480, 512, …, 800
CROP_PRE_RESIZE: tuple[int, ...] = (400, 500, 600)
CROP_MIN_SIZE = 384
CROP_MAX_SIZE = 600

# Target entries with one row per object: filtered together when a crop removes objects.
PER_OBJECT_KEYS: tuple[str, ...] = ("boxes", "labels", "area", "iscrowd", "masks")
# Objects removed because their box left the image, counted for each open ``data.augment.Augmentation`` call
DROP_COUNTS: list[int] = []

Image = PIL.Image.Image | Tensor
Target = dict[str, Any]
Sample = tuple[Image, Target | None]


def resize_shape(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """Output ``(height, width)`` of the original DETR resize of a ``height`` x ``width`` image.

    The short side becomes ``size`` unless the long side would then exceed ``max_size``, in which case
    ``size`` is first reduced to ``int(round(max_size * short / long))``. The long side is truncated
    (``int(size * long / short)``), and an image whose short side already equals ``size`` keeps its
    shape. This differs from ``torchvision.transforms.v2.Resize(max_size=...)`` by a pixel in places,
    so it is computed here. Example: ``resize_shape(480, 640, 800, 1333) == (800, 1066)``.
    """
    for name, value in (("height", height), ("width", width), ("size", size)):
        if value <= 0:
            raise ValueError(f"resize_shape: {name} must be positive, got {value}")
    if max_size is not None and max_size <= 0:
        raise ValueError(f"resize_shape: max_size must be positive or None, got {max_size}")
    short, long = float(min(height, width)), float(max(height, width))
    if max_size is not None and long / short * size > max_size:
        size = round(max_size * short / long)
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def chosen_size(image_size: int | None, max_size: int | None, model_size: tuple[int, int]) -> tuple[int, int | None]:
    """The input size a user's options give a trained model: ``(shorter side, cap)`` as given, the model's own
    ``model_size`` for what is not given (``--max_size`` alone keeps the model's shorter side); a given
    ``image_size`` alone gets its own default cap (``None``: :func:`validation_size`)."""
    if image_size is None:
        return model_size[0], max_size if max_size is not None else model_size[1]
    return image_size, max_size


def validation_size(image_size: int = REFERENCE_SIZE, max_size: int | None = None) -> tuple[int, int]:
    """``(shorter side, longer-side cap)`` of the validation resize: the one size rule of torchdetr.

    Training, evaluation and prediction resize to a shorter side of ``image_size`` with the longer side
    capped at ``max_size``, which defaults to the original 1333 scaled by ``image_size / 800``
    (``validation_size(800) == (800, 1333)``, ``validation_size(400) == (400, 666)``).

    Raises:
        ConfigError: a size that is not positive.
    """
    if image_size <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    if max_size is not None and max_size <= 0:
        raise ConfigError(f"max_size must be positive, got {max_size}")
    if max_size is None:
        max_size = round(REFERENCE_MAX_SIZE * image_size / REFERENCE_SIZE)
    return image_size, max_size


def denormalize(image: Tensor) -> Tensor:
    """Undo the ImageNet normalisation: ``image`` [3, H, W] (or [B, 3, H, W]) → same shape in [0, 1]."""
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"denormalize: expected a [3, H, W] or [B, 3, H, W] image, got shape {tuple(image.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Deterministic geometric steps on a wrapped sample (boxes: BoundingBoxes, masks: Mask)
# ----------------------------------------------------------------------------------------------
def resize(image: Image, target: Target | None, size: tuple[int, int]) -> Sample:
    """Resize the image to ``size`` = (H', W'); boxes/masks follow, ``area`` scales by (W'/W)(H'/H).

    Images are resized bilinearly (PIL images with PIL, as the original), masks with nearest neighbour.
    """
    height, width = F.get_size(image)
    new_h, new_w = size
    image = F.resize(image, [new_h, new_w])
    if target is None:
        return image, None
    target = dict(target)
    for key in ("boxes", "masks"):
        if key in target:
            target[key] = F.resize(target[key], [new_h, new_w])
    if "area" in target:
        target["area"] = target["area"] * ((new_w / width) * (new_h / height))
    target["size"] = torch.tensor([new_h, new_w], dtype=torch.int64)
    return image, target


def crop(image: Image, target: Target | None, region: tuple[int, int, int, int]) -> Sample:
    """Crop ``region`` = (top, left, height, width) as the original ``crop``.

    Boxes are shifted and clipped to the crop, ``area`` becomes the clipped box area, and objects whose
    clipped box has zero width or height (or, without boxes, whose mask is empty) are removed from every
    per-object entry (``PER_OBJECT_KEYS``).
    """
    top, left, height, width = region
    image = F.crop(image, top, left, height, width)
    if target is None:
        return image, None
    target = dict(target)
    target["size"] = torch.tensor([height, width], dtype=torch.int64)
    for key in ("boxes", "masks"):
        if key in target:
            target[key] = F.crop(target[key], top, left, height, width)
    if "boxes" in target:
        boxes = target["boxes"].as_subclass(Tensor)
        target["area"] = box_area(boxes)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    elif "masks" in target:
        keep = target["masks"].as_subclass(Tensor).flatten(1).any(1)
    else:
        return image, target
    return image, keep_objects(target, keep)


def keep_objects(target: Target, keep: Tensor) -> Target:
    """``target`` (changed in place and returned) with only the objects where ``keep`` [N] (bool) is true, in
    every per-object entry (``PER_OBJECT_KEYS``); the removed objects are counted in ``DROP_COUNTS``."""
    if DROP_COUNTS:
        DROP_COUNTS[-1] += int((~keep).sum())
    for key in PER_OBJECT_KEYS:
        if key in target:
            value = target[key]
            kept = value.as_subclass(Tensor)[keep]
            target[key] = tv_tensors.wrap(kept, like=value) if isinstance(value, tv_tensors.TVTensor) else kept
    return target


# ----------------------------------------------------------------------------------------------
# Random steps of the recipe (v2.Compose / v2.RandomChoice / v2.RandomHorizontalFlip chain them)
# ----------------------------------------------------------------------------------------------
class RandomResize(torch.nn.Module):
    """Resize to a short side drawn uniformly from ``sizes``, long side capped by ``max_size`` (``resize_shape``).

    A sample-level step: it needs the whole target (``area``), so it is a module called with
    ``(image, target)`` rather than a per-tensor ``v2.Transform``.
    """

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        super().__init__()
        if not sizes:
            raise ValueError("RandomResize: sizes must not be empty")
        self.sizes = [int(s) for s in sizes]
        self.max_size = max_size

    def forward(self, image: Image, target: Target | None = None) -> Sample:
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        height, width = F.get_size(image)
        return resize(image, target, resize_shape(height, width, size, self.max_size))

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, max_size={self.max_size}"


class RandomSizeCrop(torch.nn.Module):
    """Crop a random region with width and height drawn uniformly in [min_size, min(image side, max_size)].

    As the original ``RandomSizeCrop``; an image side shorter than ``min_size`` is kept whole (the
    original would fail there).
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomSizeCrop: need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def forward(self, image: Image, target: Target | None = None) -> Sample:
        height, width = F.get_size(image)
        crop_w = _randint_inclusive(min(self.min_size, width), min(width, self.max_size))
        crop_h = _randint_inclusive(min(self.min_size, height), min(height, self.max_size))
        top = _randint_inclusive(0, height - crop_h)
        left = _randint_inclusive(0, width - crop_w)
        return crop(image, target, (top, left, crop_h, crop_w))

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}, max_size={self.max_size}"


def _randint_inclusive(low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, ()))


# ----------------------------------------------------------------------------------------------
# Entry and exit of the pipeline
# ----------------------------------------------------------------------------------------------
class DetectionTransforms:
    """``(image, target | None) → (image [3, H, W] float32 normalised, target | None)`` around ``geometric``.

    ``geometric`` is any callable on a wrapped sample (e.g. a ``v2.Compose`` of the steps above). The
    output target has ``boxes`` float32 [N, 4] as (cx, cy, w, h) divided by the output (W, H, W, H),
    ``size`` = output (H, W), ``orig_size`` unchanged (set from the input image when absent) and
    ``masks`` bool [N, H, W] when given.
    """

    def __init__(self, geometric: Callable[[Image, Target | None], Sample]) -> None:
        self.geometric = geometric

    def __call__(self, image: Image, target: Target | None = None) -> tuple[Tensor, Target | None]:
        image = _check_image(image)
        height, width = F.get_size(image)
        if target is not None:
            target = _wrap_target(target, height, width)
        image, target = self.geometric(image, target)
        return _finish(image, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\n  {self.geometric!r}\n)"


def prepare_sample(image: Image, target: Target | None = None) -> Sample:
    """What the random steps receive: an RGB PIL image (or ``tv_tensors.Image``) and the target with ``boxes`` as
    ``tv_tensors.BoundingBoxes`` (xyxy pixels) and ``masks`` as ``tv_tensors.Mask``."""
    image = _check_image(image)
    height, width = F.get_size(image)
    return image, (_wrap_target(target, height, width) if target is not None else None)


def _check_image(image: Any) -> Image:
    if isinstance(image, PIL.Image.Image):
        return to_rgb(image)
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an RGB image tensor of shape [3, H, W], got {tuple(image.shape)}")
        return image if isinstance(image, tv_tensors.Image) else tv_tensors.Image(image)
    raise TypeError(f"expected a PIL image or a [3, H, W] tensor, got {type(image).__name__}")


def _wrap_target(target: Target, height: int, width: int) -> Target:
    target = dict(target)
    boxes = target.get("boxes")
    if boxes is not None:
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"target['boxes'] must have shape [N, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")
        target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
    masks = target.get("masks")
    if masks is not None:
        masks = torch.as_tensor(masks)
        if masks.dim() != 3 or tuple(masks.shape[1:]) != (height, width):
            raise ValueError(
                f"target['masks'] must have shape [N, {height}, {width}] (the image size), got {tuple(masks.shape)}"
            )
        target["masks"] = tv_tensors.Mask(masks)
    if "area" in target:
        target["area"] = torch.as_tensor(target["area"], dtype=torch.float32)
    counts = {key: len(target[key]) for key in PER_OBJECT_KEYS if key in target}
    if len(set(counts.values())) > 1:
        raise ValueError(f"target entries disagree on the number of objects: {counts}")
    target.setdefault("orig_size", torch.tensor([height, width], dtype=torch.int64))
    target.setdefault("size", torch.tensor([height, width], dtype=torch.int64))
    return target


def _finish(image: Image, target: Target | None) -> tuple[Tensor, Target | None]:
    tensor = F.to_dtype(F.to_image(image), torch.float32, scale=True)
    tensor = F.normalize(tensor, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)).as_subclass(Tensor)
    if target is None:
        return tensor, None
    height, width = tensor.shape[-2:]
    target = dict(target)
    if "boxes" in target:
        cxcywh = F.convert_bounding_box_format(target["boxes"], new_format=tv_tensors.BoundingBoxFormat.CXCYWH)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        target["boxes"] = cxcywh.as_subclass(Tensor) / scale
    if "masks" in target:
        target["masks"] = target["masks"].as_subclass(Tensor).to(torch.bool)
    target["size"] = torch.tensor([height, width], dtype=torch.int64)
    return tensor, target


# ----------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------
def _scaled(values: Sequence[int], factor: float) -> list[int]:
    return [max(1, round(v * factor)) for v in values]


SMALL_RECIPE_SCALES: tuple[float, ...] = (0.75, 0.875, 1.0, 1.125, 1.25)  # × image_size


def make_transforms(
    image_set: str, image_size: int = REFERENCE_SIZE, max_size: int | None = None, recipe: str = "original"
) -> Callable[[Image, Target | None], tuple[Tensor, Target | None]]:
    """The original DETR transforms, with every size scaled by ``image_size / 800``.

    - ``"train"``: RandomHorizontalFlip, then with probability 1/2 each either RandomResize(scales,
      max_size) or RandomResize([400, 500, 600]) → RandomSizeCrop(384, 600) → RandomResize(scales,
      max_size); scales = 480, 512, …, 800.
    - ``"val"`` (and ``"test"``): RandomResize([image_size], max_size).

    ``recipe="small"`` replaces the training recipe by one suited to small images and short training:
    RandomHorizontalFlip, then RandomResize to ``image_size`` × (0.75, 0.875, 1, 1.125, 1.25) — scales
    centred on the validation size (the scaled original recipe trains mostly below it) and no crop
    (objects are never cut). Validation is the same for both recipes.

    ``data.augment.augment_transforms`` replaces the training recipe by a file's (``--augment``).

    ``max_size`` defaults to ``round(1333 * image_size / 800)`` (:func:`validation_size`). The returned callable maps
    ``(image, target | None)`` to ``(image [3, H, W] float32 ImageNet-normalised, target | None)``;
    see ``DetectionTransforms`` for the output target.
    """
    image_size, max_size = validation_size(image_size, max_size)
    factor = image_size / REFERENCE_SIZE
    if recipe not in ("original", "small"):
        raise ConfigError(f"--train_recipe: unknown recipe {recipe!r} (original or small)")
    if image_set == "train" and recipe == "small":
        scales = sorted({max(1, round(image_size * f)) for f in SMALL_RECIPE_SCALES})
        geometric = v2.Compose([v2.RandomHorizontalFlip(), RandomResize(scales, max_size=max_size)])
    elif image_set == "train":
        scales = _scaled(TRAIN_SCALES, factor)
        crop_min, crop_max = _scaled((CROP_MIN_SIZE, CROP_MAX_SIZE), factor)
        geometric = v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomChoice([
                RandomResize(scales, max_size=max_size),
                v2.Compose([
                    RandomResize(_scaled(CROP_PRE_RESIZE, factor)),
                    RandomSizeCrop(crop_min, crop_max),
                    RandomResize(scales, max_size=max_size),
                ]),
            ]),
        ])
    elif image_set in ("val", "test"):
        geometric = RandomResize([image_size], max_size=max_size)
    else:
        raise ConfigError(f"unknown image set {image_set!r}: expected 'train' or 'val'")
    return DetectionTransforms(geometric)
