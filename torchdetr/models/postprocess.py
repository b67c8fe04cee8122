"""From model outputs to detections in image pixels: boxes, instance masks, panoptic segmentation."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import box_convert

from ..errors import InputFileError
from ..structures import id2rgb, rgb2id

__all__ = ["CHECKED_OUTPUTS", "PANOPTIC_MIN_AREA", "NonFiniteOutputError", "PostProcess", "PostProcessPanoptic",
           "PostProcessSegm", "check_finite_outputs", "id2rgb", "rgb2id"]

PANOPTIC_MIN_AREA = 4  # segments of at most this many pixels are dropped (then ids are recomputed)
CHECKED_OUTPUTS = ("pred_logits", "pred_boxes")  # the outputs every detection is computed from


class NonFiniteOutputError(InputFileError):
    """The model's outputs hold NaN or infinite values, so no detection it gives could be trusted."""


def check_finite_outputs(outputs: Mapping[str, Tensor], source: str | None = None) -> None:
    """Refuse outputs with NaN or infinite values (``pred_logits`` [B, Q, K+1], ``pred_boxes`` [B, Q, 4]).

    A broken model (weights saved from a diverged run, an overflow in reduced precision) gives NaN
    scores, which no threshold keeps: without this check it would silently "detect nothing". The one
    check of ``Detector`` (``detr predict``, ``detr serve``) and of the evaluation loop (``detr eval``).

    Raises:
        NonFiniteOutputError: naming ``source`` (the model's file or name) and how many images are affected.
    """
    bad_images: Tensor | None = None
    names = []
    for name in CHECKED_OUTPUTS:
        value = outputs.get(name)
        if value is None:
            continue
        finite = torch.isfinite(value.detach()).flatten(1).all(1)  # [B]
        if not bool(finite.all()):
            names.append(name)
            bad_images = ~finite if bad_images is None else bad_images | ~finite
    if bad_images is not None:
        where = f"{' and '.join(names)} for {int(bad_images.sum())} of {len(bad_images)} image(s)"
        raise NonFiniteOutputError(
            f"{f'{source}: ' if source else ''}the model produces non-finite outputs (NaN or infinite values in {where}), "
            "so its detections would be meaningless: its weights are broken (e.g. saved from a diverged training run) "
            "or a reduced-precision path overflows"
        )


class PostProcess(nn.Module):
    """Boxes in pixels of the original image, with scores/labels from the softmax without no-object.

    With ``focal=True`` (models trained with ``--cls_loss focal``) scores are sigmoid probabilities
    of the K real classes and the ``Q`` best (query, class) pairs are returned, as Deformable DETR does:
    a query can then give several rows (one per class), and ``queries`` says which query each row is.
    """

    def __init__(self, focal: bool = False) -> None:
        super().__init__()
        self.focal = focal

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """``pred_logits`` [B, Q, K+1], ``pred_boxes`` [B, Q, 4]; ``target_sizes`` [B, 2] as (H, W).

        Returns per image ``scores`` [Q], ``labels`` [Q], ``boxes`` [Q, 4] (x1, y1, x2, y2 pixels) and
        ``queries`` [Q] (the object query of each row: 0..Q-1 in order, or with ``focal`` the query of each
        (query, class) pair; the row of the decoder attention maps). The first three are the original's.
        """
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        if len(out_logits) != len(target_sizes) or target_sizes.shape[-1] != 2:
            raise ValueError(
                f"target_sizes must be [B, 2] with B = {len(out_logits)}, got {tuple(target_sizes.shape)}"
            )
        boxes = box_convert(out_bbox, "cxcywh", "xyxy")
        if self.focal:
            prob = out_logits[..., :-1].sigmoid()
            num_queries, num_classes = prob.shape[1:]
            scores, index = prob.flatten(1).topk(num_queries, dim=1)
            labels = index % num_classes
            queries = index // num_classes
            boxes = torch.gather(boxes, 1, queries.unsqueeze(-1).expand(-1, -1, 4))
        else:
            prob = F.softmax(out_logits, -1)
            scores, labels = prob[..., :-1].max(-1)
            queries = torch.arange(out_logits.shape[1], device=out_logits.device).expand(len(out_logits), -1)
        img_h, img_w = target_sizes.unbind(1)
        scale_fct = torch.stack([img_w, img_h, img_w, img_h], dim=1)
        boxes = boxes * scale_fct[:, None, :]
        return [{"scores": s, "labels": lab, "boxes": b, "queries": q}
                for s, lab, b, q in zip(scores, labels, boxes, queries)]


class PostProcessSegm(nn.Module):
    """Binary instance masks at the original image size, added to the box results."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    @torch.no_grad()
    def forward(
        self,
        results: list[dict[str, Tensor]],
        outputs: Mapping[str, Tensor],
        orig_target_sizes: Tensor,
        max_target_sizes: Tensor,
    ) -> list[dict[str, Tensor]]:
        """Adds ``masks`` [Q, 1, H_orig, W_orig] uint8 to each result.

        ``max_target_sizes`` [B, 2] are the unpadded sizes of the images the model saw.
        """
        if len(orig_target_sizes) != len(max_target_sizes):
            raise ValueError("orig_target_sizes and max_target_sizes must have the same length")
        max_h, max_w = max_target_sizes.max(0)[0].tolist()
        outputs_masks = outputs["pred_masks"].squeeze(2)
        outputs_masks = F.interpolate(outputs_masks, size=(max_h, max_w), mode="bilinear", align_corners=False)
        outputs_masks = (outputs_masks.sigmoid() > self.threshold).cpu()
        for i, (cur_mask, t, tt) in enumerate(zip(outputs_masks, max_target_sizes, orig_target_sizes)):
            img_h, img_w = int(t[0]), int(t[1])
            masks = cur_mask[:, :img_h, :img_w].unsqueeze(1)
            results[i]["masks"] = F.interpolate(masks.float(), size=tuple(tt.tolist()), mode="nearest").byte()
        return results


class PostProcessPanoptic(nn.Module):
    """Panoptic segmentation (COCO panoptic PNG + segments_info) from a mask model's outputs.

    Queries whose best class is not "no object" and whose score exceeds ``threshold`` are kept;
    each pixel goes to the kept query with the highest mask logit; masks of the same stuff class
    are merged; segments of ≤ 4 pixels are dropped.
    """

    def __init__(self, is_thing_map: Mapping[int, bool], threshold: float = 0.85) -> None:
        super().__init__()
        self.threshold = threshold
        self.is_thing_map = is_thing_map

    @torch.no_grad()
    def forward(
        self,
        outputs: Mapping[str, Tensor],
        processed_sizes: Tensor | Sequence[tuple[int, int]],
        target_sizes: Tensor | Sequence[tuple[int, int]] | None = None,
    ) -> list[dict]:
        """``processed_sizes``: (H, W) the model saw per image; ``target_sizes``: final (H, W).

        Returns per image ``{"png_string": bytes, "segments_info": [{id, isthing, category_id, area}]}``.
        """
        if target_sizes is None:
            target_sizes = processed_sizes
        out_logits, raw_masks, raw_boxes = outputs["pred_logits"], outputs["pred_masks"], outputs["pred_boxes"]
        if not len(processed_sizes) == len(target_sizes) == len(out_logits) == len(raw_masks):
            raise ValueError("outputs, processed_sizes and target_sizes must have the same batch size")
        no_object = out_logits.shape[-1] - 1
        return [
            self._single(cur_logits, cur_masks, cur_boxes, _to_tuple(size), _to_tuple(target_size), no_object)
            for cur_logits, cur_masks, cur_boxes, size, target_size
            in zip(out_logits, raw_masks, raw_boxes, processed_sizes, target_sizes)
        ]

    def _is_thing(self, label: int) -> bool:
        try:
            return bool(self.is_thing_map[label])
        except KeyError:
            raise KeyError(
                f"PostProcessPanoptic: class id {label} is not in is_thing_map "
                f"(ids {min(self.is_thing_map)}..{max(self.is_thing_map)})"
            ) from None

    def _single(self, cur_logits, cur_masks, cur_boxes, size, target_size, no_object: int) -> dict:
        scores, labels = cur_logits.softmax(-1).max(-1)
        keep = labels.ne(no_object) & (scores > self.threshold)
        cur_scores, cur_classes = scores[keep], labels[keep]
        cur_masks = cur_masks[keep]
        cur_masks = F.interpolate(cur_masks[:, None], size, mode="bilinear").squeeze(1)
        h, w = cur_masks.shape[-2:]
        cur_masks = cur_masks.flatten(1)

        # several predictions of the same stuff class are merged into one segment
        stuff_equiv_classes: dict[int, list[int]] = defaultdict(list)
        for k, label in enumerate(cur_classes.tolist()):
            if not self._is_thing(label):
                stuff_equiv_classes[label].append(k)

        def get_ids_area(masks: Tensor, num_segments: int, dedup: bool = False) -> tuple[list[int], Image.Image]:
            m_id = masks.transpose(0, 1).softmax(-1)
            if m_id.shape[-1] == 0:
                m_id = torch.zeros((h, w), dtype=torch.long, device=m_id.device)
            else:
                m_id = m_id.argmax(-1).view(h, w)
            if dedup:
                for equiv in stuff_equiv_classes.values():
                    if len(equiv) > 1:
                        for eq_id in equiv:
                            m_id.masked_fill_(m_id.eq(eq_id), equiv[0])
            final_h, final_w = target_size
            seg_img = Image.fromarray(id2rgb(m_id.view(h, w).cpu().numpy()))
            seg_img = seg_img.resize(size=(final_w, final_h), resample=Image.NEAREST)
            ids = torch.from_numpy(rgb2id(np.asarray(seg_img)))
            area = torch.bincount(ids.flatten(), minlength=num_segments)[:num_segments].tolist()
            return area, seg_img

        area, seg_img = get_ids_area(cur_masks, len(cur_scores), dedup=True)
        if cur_classes.numel() > 0:
            while True:  # drop tiny segments until none is left
                filtered_small = torch.as_tensor([a <= PANOPTIC_MIN_AREA for a in area], dtype=torch.bool)
                if not filtered_small.any():
                    break
                keep_big = ~filtered_small.to(cur_scores.device)
                cur_scores, cur_classes, cur_masks = cur_scores[keep_big], cur_classes[keep_big], cur_masks[keep_big]
                area, seg_img = get_ids_area(cur_masks, len(cur_scores))
        else:
            cur_classes = torch.ones(1, dtype=torch.long, device=cur_classes.device)

        segments_info = []
        for i, a in enumerate(area):
            cat = int(cur_classes[i])
            segments_info.append({"id": i, "isthing": self._is_thing(cat), "category_id": cat, "area": a})
        with io.BytesIO() as out:
            seg_img.save(out, format="PNG")
            return {"png_string": out.getvalue(), "segments_info": segments_info}


def _to_tuple(size: Tensor | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, Tensor):
        return tuple(int(v) for v in size.tolist())  # type: ignore[return-value]
    return (int(size[0]), int(size[1]))
