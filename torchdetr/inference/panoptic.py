"""The record of one image's panoptic segmentation, from a mask model's outputs.

The segmentation is the original's ``PostProcessPanoptic`` (queries above the threshold, each pixel to the
query with the highest mask logit, stuff of one class merged, tiny segments dropped), at the input image's
size, numbered as COCO panoptic files are: segment ids 1, 2, … (0 is unlabelled), so that
``PanopticPrediction.png()`` + ``segments_info`` are a COCO panoptic prediction that ``detr eval`` scores.
When the model's categories are known, segments of class ids that are none of them (ids its training data
never used) are left out, their pixels unlabelled: evaluation could not score them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from torch import Tensor

from ..models.build import PANOPTIC_THRESHOLD, panoptic_is_thing_map
from ..models.postprocess import PostProcessPanoptic
from ..structures import id2rgb, rgb2id

__all__ = ["PANOPTIC_THRESHOLD", "PanopticPrediction", "PanopticSegment", "panoptic_from_outputs"]


@dataclass(frozen=True)
class PanopticSegment:
    """One segment: its ``id`` in the id map (1, 2, …), class id ``category_id`` and ``name``, whether the
    class is a thing (else stuff), its ``area`` in pixels of the input image and its ``bbox`` [x, y, width,
    height] in pixels (COCO's: the pixels it covers, ``x + width`` is one past the last column)."""

    id: int
    category_id: int
    name: str
    isthing: bool
    area: int
    bbox: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


@dataclass
class PanopticPrediction:
    """The panoptic segmentation of one image: ``id_map`` int64 [H, W] (the input image's size; 0 =
    unlabelled, else the ``id`` of a segment) and its ``segments``."""

    id_map: np.ndarray
    segments: list[PanopticSegment]

    @property
    def segments_info(self) -> list[dict[str, Any]]:
        """The segments as COCO panoptic ``segments_info`` (``id``, ``category_id``, ``isthing``, ``area``, ``bbox``)."""
        return [{"id": s.id, "category_id": s.category_id, "isthing": s.isthing, "area": s.area, "bbox": list(s.bbox)}
                for s in self.segments]

    def png(self) -> Image.Image:
        """The id map as a COCO panoptic PNG (RGB, id = R + 256·G + 256²·B)."""
        return Image.fromarray(id2rgb(self.id_map))


def panoptic_from_outputs(
    outputs: Mapping[str, Tensor],
    processed_sizes: Sequence[tuple[int, int]],
    image_sizes: Sequence[tuple[int, int]],
    *,
    threshold: float = PANOPTIC_THRESHOLD,
    isthing: Mapping[int, bool] | None = None,
    category_names: Mapping[int, str] | None = None,
) -> list[PanopticPrediction]:
    """``pred_logits`` [B, Q, K+1], ``pred_boxes`` [B, Q, 4], ``pred_masks`` [B, Q, h, w] → one prediction per image.

    ``processed_sizes``: (H, W) of each image as the model saw it (unpadded); ``image_sizes``: (H, W) of the
    input images. ``isthing``: the model's ``{category id: is a thing}`` (other ids: the COCO convention,
    :func:`~torchdetr.models.build.panoptic_is_thing_map`). ``category_names``: the model's categories; when
    given, segments of other class ids are left out (their pixels become unlabelled, 0).
    """
    num_classes = outputs["pred_logits"].shape[-1] - 1
    postprocess = PostProcessPanoptic(panoptic_is_thing_map(num_classes, isthing), threshold=threshold)
    raw = postprocess({k: outputs[k].float() for k in ("pred_logits", "pred_boxes", "pred_masks")},
                      list(processed_sizes), list(image_sizes))
    names = category_names or {}
    predictions = []
    for result in raw:
        ids = rgb2id(np.asarray(Image.open(io.BytesIO(result["png_string"])).convert("RGB")))
        info = [s for s in result["segments_info"] if not names or int(s["category_id"]) in names]
        lookup = np.zeros(len(result["segments_info"]) + 1, dtype=np.int64)  # the post-processor's ids are 0, 1, …
        lookup[[s["id"] for s in info]] = np.arange(1, len(info) + 1)
        id_map = lookup[np.minimum(ids, len(lookup) - 1)] if info else np.zeros_like(ids)
        extents = ndimage.find_objects(id_map, max_label=len(info))  # per segment id: (rows, columns) slices
        segments = [PanopticSegment(id=k + 1, category_id=int(s["category_id"]),
                                    name=names.get(int(s["category_id"]), str(s["category_id"])),
                                    isthing=bool(s["isthing"]), area=int(s["area"]), bbox=_bbox(extents[k]))
                    for k, s in enumerate(info)]
        predictions.append(PanopticPrediction(id_map=id_map, segments=segments))
    return predictions


def _bbox(extent: tuple[slice, slice] | None) -> tuple[int, int, int, int]:
    """COCO [x, y, width, height] of a segment's (rows, columns) slices; an empty segment (none is kept) → zeros."""
    if extent is None:
        return (0, 0, 0, 0)
    rows, cols = extent
    return (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
