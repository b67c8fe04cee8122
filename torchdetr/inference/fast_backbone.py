"""The ResNet backbone for inference: batch norm folded into the convolutions, ReLU and residual sum fused.

The faithful backbone runs every ``conv → FrozenBatchNorm2d → ReLU`` as three passes over the
activations (plus one for the residual sum), with weights in torch's plain layout that oneDNN reorders
at every call. Here each convolution carries its normalisation folded into weight and bias
(``w · γ/√(σ²+ε)``, ``β − μ · γ/√(σ²+ε)``: the same function, rounded differently, ~1e-6 relative),
and on a CPU with oneDNN it runs as one fused oneDNN primitive on channels-last activations with
weights packed in oneDNN's blocked layout for each input shape (the operators ``torch.compile`` emits for the same
pattern): convolution + bias + ReLU, and for the last convolution of a block + residual sum + ReLU.
Elsewhere (CUDA, autograd) the folded weights run through ``F.conv2d``.

Derived weights (folded, cast, packed) are computed on first use and again whenever one of the source
tensors changes (its ``_version`` counter or storage), so they follow the model they were taken from.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

FOLDABLE_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)
MKLDNN_DTYPES = (torch.float32, torch.bfloat16)
NO_ACTIVATION = "none"
RELU = "relu"


def _source_key(tensors: Sequence[Tensor | None]) -> tuple:
    """What identifies the current values of ``tensors``: storage, dtype, device and in-place version of each."""
    return tuple(
        None if t is None else (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors
    )


class DerivedTensors:
    """Tensors computed from source tensors, recomputed when a source changes.

    ``get(key, compute)``: ``key`` names what the derived tensors depend on besides the sources (e.g.
    the dtype asked for, an input shape); sources are read through ``sources()`` at every call, so a
    ``model.to(...)`` or an optimiser step on the shared weights is seen. At most ``max_entries`` keys
    are kept, the least recently used dropped first.
    """

    def __init__(self, sources: Callable[[], Sequence[Tensor | None]], max_entries: int = 2) -> None:
        self._sources = sources
        self._max_entries = max_entries
        self._cache: OrderedDict[Hashable, tuple[tuple, tuple[Tensor | None, ...]]] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], tuple[Tensor | None, ...]]) -> tuple[Tensor | None, ...]:
        source_key = _source_key(self._sources())
        cached = self._cache.get(key)
        if cached is None or cached[0] != source_key:
            with torch.no_grad():
                cached = (source_key, compute())
            self._cache[key] = cached
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return cached[1]


def norm_scale_shift(norm: nn.Module, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` [C] of an eval-mode batch norm, ``norm(x) = x · scale + shift``, in ``dtype``."""
    mean, var = norm.running_mean.to(dtype), norm.running_var.to(dtype)
    weight = torch.ones_like(var) if norm.weight is None else norm.weight.to(dtype)
    bias = torch.zeros_like(var) if norm.bias is None else norm.bias.to(dtype)
    scale = weight * (var + norm.eps).rsqrt()
    return scale, bias - mean * scale


def fold_norm(conv: nn.Conv2d, norm: nn.Module | None) -> tuple[Tensor, Tensor | None]:
    """Weight [O, I, kh, kw] and bias [O] of ``norm(conv(x))`` as one convolution (``conv`` alone without ``norm``).

    Computed in float64 and rounded once to the weights' dtype (the nearest floats to the exact product).
    """
    if norm is None:
        return conv.weight, conv.bias
    scale, shift = norm_scale_shift(norm)
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)


def can_fold(norm: nn.Module) -> bool:
    """Whether ``norm`` is a batch norm whose eval-mode function is a per-channel affine map."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats and norm.running_var is not None


def mkldnn_usable(x: Tensor) -> bool:
    """Whether the fused oneDNN convolution can run on ``x``: CPU, float32/bfloat16, no autograd."""
    if x.device.type != "cpu" or x.dtype not in MKLDNN_DTYPES or torch.is_grad_enabled():
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    return x.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class FusedConv(nn.Module):
    """``activation(norm(conv(x)) [+ residual])`` as one convolution; ``conv`` and ``norm`` are the model's own.

    ``forward(x [B, I, H, W], residual [B, O, H', W'] | None, relu)`` → [B, O, H', W'] in ``x``'s dtype,
    channels-last. Inference only (the oneDNN operator has no gradient).
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.Module | None = None) -> None:
        super().__init__()
        if norm is not None and not can_fold(norm):
            raise ValueError(f"cannot fold {type(norm).__name__} into a convolution")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv supports zero padding given in pixels")
        self.conv = conv
        self.norm = norm
        self._derived = DerivedTensors(self._sources)

    def _sources(self) -> list[Tensor | None]:
        sources = [self.conv.weight, self.conv.bias]
        norm = self.norm
        if norm is not None:
            sources += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
        return sources

    def _geometry(self) -> tuple[list[int], list[int], list[int], int]:
        conv = self.conv
        return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups

    def folded(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """The folded weight (channels-last) and bias in ``dtype`` for ``F.conv2d``."""
        def compute() -> tuple[Tensor, Tensor | None]:
            weight, bias = fold_norm(self.conv, self.norm)
            weight = weight.to(dtype).contiguous(memory_format=torch.channels_last)
            return weight, None if bias is None else bias.to(dtype)

        return self._derived.get(("folded", dtype), compute)  # type: ignore[return-value]

    def packed(self, dtype: torch.dtype, input_shape: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        """The folded weight in oneDNN's blocked layout for inputs of ``input_shape`` [B, I, H, W], and the bias, in ``dtype``.

        oneDNN picks its convolution kernel from the input shape and the weight layout must be the one
        that kernel reads: a weight packed without the shape is reordered again at every call (measured
        3-4× slower for ResNet's 1×1 convolutions with many channels), so weights are packed per input
        shape (the last few shapes are kept).
        """
        def compute() -> tuple[Tensor, Tensor | None]:
            weight, bias = fold_norm(self.conv, self.norm)
            padding, stride, dilation, groups = self._geometry()
            weight = torch.ops.mkldnn._reorder_convolution_weight(weight.to(dtype).contiguous(), padding, stride,
                                                                  dilation, groups, list(input_shape))
            return weight, None if bias is None else bias.to(dtype).contiguous()

        return self._derived.get(("packed", dtype, tuple(input_shape)), compute)  # type: ignore[return-value]

    def forward(self, x: Tensor, residual: Tensor | None = None, relu: bool = False) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        padding, stride, dilation, groups = self._geometry()
        if mkldnn_usable(x):
            weight, bias = self.packed(x.dtype, x.shape)
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, weight, bias, padding, stride, dilation, groups, RELU if relu else NO_ACTIVATION, [], "")
            residual = residual.to(x.dtype).contiguous(memory_format=torch.channels_last)
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, weight, bias, padding, stride, dilation, groups, "add", 1.0,
                RELU if relu else None, [], "")
        weight, bias = self.folded(x.dtype)
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        if residual is not None:
            out = out + residual
        return out.relu_() if relu else out


class FusedBlock(nn.Module):
    """A torchvision ``Bottleneck`` / ``BasicBlock`` as fused convolutions; the last one adds the shortcut and applies ReLU."""

    def __init__(self, block: Bottleneck | BasicBlock) -> None:
        super().__init__()
        pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        if isinstance(block, Bottleneck):
            pairs.append((block.conv3, block.bn3))
        self.convs = nn.ModuleList(FusedConv(conv, norm) for conv, norm in pairs)
        self.downsample = None
        if block.downsample is not None:
            conv, norm = block.downsample
            self.downsample = FusedConv(conv, norm)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        *inner, last = self.convs
        out = x
        for conv in inner:
            out = conv(out, relu=True)
        return last(out, residual=shortcut, relu=True)


def fusable_body(body: nn.Module) -> bool:
    """Whether ``body`` (a backbone's ``IntermediateLayerGetter`` over a torchvision ResNet) can be fused:
    batch-norm layers (frozen or eval-mode) and standard blocks only."""
    if not isinstance(body, IntermediateLayerGetter) or not hasattr(body, "conv1"):
        return False
    norms_ok = all(can_fold(m) for m in body.modules() if "Norm" in type(m).__name__)
    blocks_ok = all(isinstance(block, Bottleneck | BasicBlock)
                    for name, layer in body.named_children() if name.startswith("layer") for block in layer)
    return norms_ok and blocks_ok and isinstance(body.conv1, nn.Conv2d) and isinstance(body.maxpool, nn.MaxPool2d)


class FusedResNetBody(nn.Module):
    """Drop-in for a backbone's ResNet body: images [B, 3, H, W] → ordered dict of the returned stages.

    Same keys as the ``IntermediateLayerGetter`` it replaces (``"0"`` for layer4, or ``"0".."3"``);
    maps are channels-last in ``compute_dtype`` (the images are cast to it first).
    """

    def __init__(self, body: IntermediateLayerGetter, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not fusable_body(body):
            raise ValueError("the backbone body is not a ResNet with foldable batch norms")
        self.stem = FusedConv(body.conv1, body.bn1)
        self.maxpool = body.maxpool
        self.stages = nn.ModuleDict()
        for name, layer in body.named_children():
            if name.startswith("layer"):
                self.stages[name] = nn.Sequential(*(FusedBlock(block) for block in layer))
        self.return_layers = dict(body.return_layers)
        self.compute_dtype = compute_dtype

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        x = images.to(self.compute_dtype).contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.stem(x, relu=True))
        out: OrderedDict[str, Tensor] = OrderedDict()
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out
