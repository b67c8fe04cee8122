"""A faster training step with the faithful step's losses and gradients (``--fast_train``).

The faithful step is the original's: every ``nn.MultiheadAttention`` is called with its default
``need_weights=True`` (it builds the [B·heads, L, S] attention matrix with ``baddbmm``/softmax/``bmm``
and averages it over heads for a result DETR throws away), and the criterion matches and scores each
decoder layer separately (one cost matrix, one device→host copy and ~30 small tensor operations per
layer). The fast step computes the same functions with less work:

- **attention**: while the model trains, a forward pre-hook calls each attention with
  ``need_weights=False``, which PyTorch runs through ``scaled_dot_product_attention`` (the fused
  kernel; its backward too). Weights, module tree and checkpoints are unchanged; evaluation keeps
  the faithful call. With dropout, the attention-dropout masks are drawn by the fused kernel (same
  probability, other random numbers), so losses agree exactly only without dropout;
- **matching** (:class:`FastSetCriterion`): one cost computation over all decoder layers
  ([L·B·Q, ΣM]), one copy to the host, then the Hungarian assignment per (layer, image), the same
  scipy call on the same cost values;
- **losses**: classification, box and cardinality losses of all layers computed at once on the
  stacked layers and summed per layer (GIoU of matched pairs only, not the [N, N] matrix whose
  diagonal the original keeps).

Losses agree with the faithful criterion to float32 rounding (summation order), gradients likewise
(``tests/test_fast_step.py``).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d, box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from ..losses.matcher import HungarianMatcher, Indices, hungarian_assignment
from ..losses.set_criterion import SetCriterion, Targets, top1_accuracy, world_average_num_boxes

LOSS_NAMES = {"labels": ("loss_ce", "class_error"), "boxes": ("loss_bbox", "loss_giou"),
              "cardinality": ("cardinality_error",)}  # the entries of each loss, as SetCriterion names them


def _attention_without_weights(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    """Forward pre-hook: ``need_weights=False`` while training (the fused kernel; no head-averaged weights).

    Not on a CPU with attention dropout: there the fused kernel has no dropout and PyTorch falls back to
    a composite path slower than the faithful one (measured in ``benchmarks/train_step.py``).
    """
    query = args[0] if args else kwargs.get("query")
    if not module.training or (module.dropout > 0 and query is not None and query.device.type == "cpu"):
        return None
    return args, {**kwargs, "need_weights": False}


def enable_fast_attention(model: nn.Module) -> list[RemovableHandle]:
    """Make every ``nn.MultiheadAttention`` of ``model`` skip its attention weights while training.

    Returns the hook handles (``handle.remove()`` restores the faithful call). The model's parameters,
    module tree and state dict are unchanged.
    """
    return [module.register_forward_pre_hook(_attention_without_weights, with_kwargs=True)
            for module in model.modules() if isinstance(module, nn.MultiheadAttention)]


def _norm_pairs(body: nn.Module) -> list[tuple[nn.Conv2d, FrozenBatchNorm2d]]:
    """(convolution, the frozen batch norm right after it) pairs of a torchvision ResNet body, by their names."""
    modules = dict(body.named_modules())
    pairs = []
    for name, module in modules.items():
        if not isinstance(module, nn.Conv2d):
            continue
        prefix, _, leaf = name.rpartition(".")
        if leaf.startswith("conv"):
            norm_name = f"{prefix}.bn{leaf[4:]}" if prefix else f"bn{leaf[4:]}"
        elif leaf == "0" and prefix.endswith("downsample"):
            norm_name = f"{prefix}.1"
        else:
            continue
        norm = modules.get(norm_name)
        if isinstance(norm, FrozenBatchNorm2d):
            pairs.append((module, norm))
    return pairs


FOLDED_NORM = "_fast_training_norm"  # instance attribute of a folded convolution: its norm (not a submodule)
CHANNELS_LAST = "_fast_training_channels_last"


def _folded_conv_forward(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv`` then its frozen norm as one convolution with the norm folded into the weights (differentiable).

    FrozenBatchNorm2d computes ``x · scale + shift`` with ``scale = w · rsqrt(running_var + eps)``,
    ``shift = b − running_mean · scale``; ``conv(x, W · scale, shift)`` is the same function. Bound to
    the convolution as its ``forward`` (a method, so that ``copy.deepcopy`` of the model, as EMA does,
    binds the copy to the copied convolution and norm).
    """
    norm = conv.__dict__[FOLDED_NORM]
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias - norm.running_mean * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    if conv.__dict__[CHANNELS_LAST]:
        weight = weight.contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return conv._conv_forward(x, weight, shift)


def _identity_forward(module: nn.Module, x: Tensor) -> Tensor:
    """A folded norm's forward: its work is done by the convolution before it."""
    return x


class FastTraining:
    """What :func:`enable_fast_training` changed on a model; ``remove()`` restores the faithful forward."""

    def __init__(self) -> None:
        self.handles: list[RemovableHandle] = []
        self.patched: list[nn.Module] = []  # modules whose ``forward`` is overridden on the instance

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for module in self.patched:
            for attribute in ("forward", FOLDED_NORM, CHANNELS_LAST):
                module.__dict__.pop(attribute, None)
        self.handles, self.patched = [], []


def enable_fast_training(model: nn.Module, channels_last: bool = False) -> FastTraining:
    """The fast training forward on ``model`` itself (its parameters, module tree and state dict unchanged).

    - every ``nn.MultiheadAttention`` skips its attention weights while training (:func:`enable_fast_attention`);
    - every ResNet convolution followed by a ``FrozenBatchNorm2d`` runs as one convolution with the norm
      folded into its weights (computed from the current weights at every call, so gradients reach
      the convolution's weights as in the faithful step), the norm becoming the identity;
      ``channels_last`` runs these convolutions channels-last.

    Works under DistributedDataParallel and EMA (the same parameters are used). Evaluation of the same
    model also takes the folded convolutions (same function, float32 rounding).
    """
    state = FastTraining()
    state.handles = enable_fast_attention(model)
    for module in model.modules():
        for conv, norm in _norm_pairs(module) if isinstance(module, IntermediateLayerGetter) else ():
            conv.__dict__[FOLDED_NORM] = norm
            conv.__dict__[CHANNELS_LAST] = channels_last
            conv.forward = types.MethodType(_folded_conv_forward, conv)
            norm.forward = types.MethodType(_identity_forward, norm)
            state.patched += [conv, norm]
    return state


def match_layers(matcher: HungarianMatcher, layers: list[dict[str, Tensor]], targets: Targets) -> list[Indices]:
    """Hungarian indices of every decoder layer from one cost computation and one host copy.

    ``layers``: per layer ``pred_logits`` [B, Q, K+1] and ``pred_boxes`` [B, Q, 4]. Each (layer, image)
    is assigned on the same cost values as ``matcher(layer, targets)`` computes.
    """
    stacked = {key: torch.cat([layer[key] for layer in layers]) for key in ("pred_logits", "pred_boxes")}  # [L·B, Q, …]
    rows = hungarian_assignment(matcher.cost_matrix(stacked, targets), [len(t["boxes"]) for t in targets])  # [L·B] on the CPU
    batch = len(targets)
    return [rows[layer * batch:(layer + 1) * batch] for layer in range(len(layers))]


class FastSetCriterion(SetCriterion):
    """``SetCriterion`` with all decoder layers matched and scored at once; the same losses dict.

    Masks (final layer only) are computed as in ``SetCriterion``.
    """

    @classmethod
    def from_criterion(cls, criterion: SetCriterion) -> FastSetCriterion:
        """The fast criterion of ``criterion``'s settings (matcher, weights, losses, ``empty_weight`` shared)."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.__dict__.update({k: v for k, v in criterion.__dict__.items() if not k.startswith("_")})
        fast._buffers = dict(criterion._buffers)
        fast._modules = dict(criterion._modules)
        fast.train(criterion.training)
        return fast

    def forward(self, outputs: dict, targets: Targets) -> dict[str, Tensor]:
        """All losses (unweighted) of the final layer and of every auxiliary layer, keys as ``SetCriterion``'s."""
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        layers = [*outputs.get("aux_outputs", []), final]  # the final layer last
        indices = match_layers(self.matcher, layers, targets)
        num_boxes = world_average_num_boxes(targets, final["pred_logits"].device, synchronize=self.training)
        suffixes = [f"_{i}" for i in range(len(layers) - 1)] + [""]

        matched = self._matched(indices, targets, final["pred_logits"].device)
        per_layer: dict[str, Tensor] = {}  # name → [L] values
        if "labels" in self.losses:
            per_layer.update(self._labels(layers, targets, matched, num_boxes))
        if "boxes" in self.losses:
            per_layer.update(self._boxes(layers, targets, matched, num_boxes))
        if "cardinality" in self.losses:
            per_layer.update(self._cardinality(layers, targets))

        losses: dict[str, Tensor] = {}
        for loss in self.losses:  # in SetCriterion's order: the final layer, then each auxiliary layer
            if loss == "masks":
                losses.update(self.loss_masks(outputs, targets, indices[-1], num_boxes))
            else:
                losses.update({name: per_layer[name][-1] for name in LOSS_NAMES[loss]})
        for layer, suffix in enumerate(suffixes[:-1]):
            for loss in self.losses:
                names = [n for n in LOSS_NAMES.get(loss, ()) if n != "class_error"]  # logged for the final layer only
                losses.update({f"{name}{suffix}": per_layer[name][layer] for name in names})
        return losses

    # -- all layers at once -----------------------------------------------------------------------
    @staticmethod
    def _matched(indices: list[Indices], targets: Targets, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(layer, image, query, target row) of every matched pair of every layer, each [N], on ``device`` in one
        host → device copy; the target row indexes the batch's targets concatenated (``torch.cat`` of ``labels``)."""
        batch = len(targets)
        pairs = [pair for layer_indices in indices for pair in layer_indices]  # [L·B] (queries, targets) on the CPU
        rows = torch.repeat_interleave(torch.arange(len(pairs)), torch.as_tensor([len(src) for src, _ in pairs]))  # [N]
        images = rows % batch
        first_row = torch.as_tensor([0, *(len(t["labels"]) for t in targets)]).cumsum(0)[:-1]  # [B]
        target_rows = first_row[images] + torch.cat([tgt for _, tgt in pairs])
        queries = torch.cat([src for src, _ in pairs])
        return tuple(torch.stack([rows // batch, images, queries, target_rows]).to(device).unbind())  # type: ignore[return-value]

    def _labels(self, layers: list[dict[str, Tensor]], targets: Targets, matched: tuple[Tensor, ...],
                num_boxes: float) -> dict[str, Tensor]:
        logits = torch.stack([layer["pred_logits"] for layer in layers])  # [L, B, Q, K+1]
        num_layers = logits.shape[0]
        device = logits.device
        layer_ids, images, queries, target_rows = matched
        labels = torch.cat([t["labels"] for t in targets])[target_rows]  # [N]
        target_classes = torch.full(logits.shape[:3], self.num_classes, dtype=torch.int64, device=device)
        target_classes[layer_ids, images, queries] = labels
        if self.cls_loss == "focal":
            onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
            focal = sigmoid_focal_loss(logits[..., :-1], onehot, alpha=self.focal_alpha, gamma=2, reduction="none")
            loss_ce = focal.flatten(1).sum(1) / num_boxes
        else:
            # weighted mean per layer, as F.cross_entropy(weight=empty_weight): Σ w·l / Σ w
            weighted = F.cross_entropy(logits.flatten(0, 1).transpose(1, 2), target_classes.flatten(0, 1),
                                       self.empty_weight, reduction="none")  # [L·B, Q], already × w
            loss_ce = weighted.view(num_layers, -1).sum(1) / self.empty_weight[target_classes].view(num_layers, -1).sum(1)
        final = layer_ids == num_layers - 1
        matched = logits[-1][images[final], queries[final]]
        matched = matched[:, :-1] if self.cls_loss == "focal" else matched
        class_error = 100 - top1_accuracy(matched, labels[final])
        return {"loss_ce": loss_ce, "class_error": class_error.expand(num_layers)}

    def _boxes(self, layers: list[dict[str, Tensor]], targets: Targets, matched: tuple[Tensor, ...],
               num_boxes: float) -> dict[str, Tensor]:
        boxes = torch.stack([layer["pred_boxes"] for layer in layers])  # [L, B, Q, 4]
        num_layers = boxes.shape[0]
        layer_ids, images, queries, target_rows = matched
        target_boxes = torch.cat([t["boxes"] for t in targets])[target_rows]  # [N, 4]
        src_boxes = boxes[layer_ids, images, queries]  # [N, 4]
        l1 = F.l1_loss(src_boxes, target_boxes, reduction="none").sum(1)  # [N]
        # 1 − GIoU of each matched pair (torchvision's paired loss, eps 0: the diagonal of generalized_box_iou)
        giou = generalized_box_iou_loss(box_convert(src_boxes, "cxcywh", "xyxy"),
                                        box_convert(target_boxes, "cxcywh", "xyxy"), reduction="none", eps=0.0)  # [N]
        zeros = boxes.new_zeros(num_layers)
        return {"loss_bbox": zeros.index_add(0, layer_ids, l1) / num_boxes,
                "loss_giou": zeros.index_add(0, layer_ids, giou) / num_boxes}

    @torch.no_grad()
    def _cardinality(self, layers: list[dict[str, Tensor]], targets: Targets) -> dict[str, Tensor]:
        logits = torch.stack([layer["pred_logits"] for layer in layers])  # [L, B, Q, K+1]
        lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device, dtype=torch.float)
        if self.cls_loss == "focal":
            predicted = (logits[..., :-1].sigmoid().max(-1).values > 0.5).sum(-1)
        else:
            predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(-1)  # [L, B]
        return {"cardinality_error": (predicted.float() - lengths).abs().mean(1)}
