"""Fast inference paths beside the faithful one: ``optimize(model, precision, compile)``.

``optimize`` returns a module that is called like the model (a NestedTensor, a list of [3, H, W]
images or a [B, 3, H, W] tensor) and returns the same output dict (``pred_logits`` [B, Q, K+1],
``pred_boxes`` [B, Q, 4], ``pred_masks``, ``aux_outputs`` when the model has them), in float32. The
model itself is not changed: the fast module is a second tree of module objects over the *same*
parameters and buffers, in which some modules are replaced by faster equivalents:

- the ResNet body → ``FusedResNetBody`` (batch norm folded into the convolutions, channels-last,
  oneDNN-fused convolution + ReLU / + residual + ReLU with weights packed per input shape; ``fast_backbone``);
- ``input_proj`` → the same fused convolution;
- every ``nn.MultiheadAttention`` → ``FastAttention`` (the module called with ``need_weights=False``:
  PyTorch's fused ``scaled_dot_product_attention`` over the original packed projections; ``fast_attention``);
- the position encoding → cached per feature-map size for unpadded batches;
- and the whole forward runs under ``torch.inference_mode``.

Precisions: ``fp32`` stays within 1e-4 of the faithful outputs (``tests/test_optimize.py``); ``bf16``
runs the backbone in bfloat16 and the transformer under bfloat16 autocast, with the class and box
heads in float32 (the drift is measured in ``benchmarks/results/inference.md``); ``fp16`` is float16
autocast for CUDA. ``compile=True`` additionally compiles the fast module with ``torch.compile``
(inductor, weights frozen): the first call per input size is slow. Derived weights (folded,
packed, cast) follow in-place changes of the shared weights (see ``fast_backbone.DerivedTensors``).
What the fast paths do not cover (GroupNorm backbones, custom layers) runs as in the model.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.runtime import to_float
from ..errors import ConfigError
from ..models.backbone import Backbone, Joiner
from ..structures import NestedTensor, as_nested_tensor
from .fast_attention import FastAttention, supports_fast_attention
from .fast_backbone import FusedConv, FusedResNetBody, fusable_body
from .precision import FAITHFUL, check_precision

log = logging.getLogger(__name__)

COMPUTE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
POSITION_CACHE_SIZES = 8  # feature-map sizes whose position encodings are kept
HEAD_NAMES = ("class_embed", "bbox_embed")  # output heads, kept in float32 under bf16/fp16


def shared_copy(module: nn.Module) -> nn.Module:
    """A new tree of module objects over the same parameters and buffers (nothing is copied but the modules).

    Replacing a submodule of the copy leaves ``module`` unchanged; changing a weight in place changes both.
    Hooks are not carried over.
    """
    clone = copy.copy(module)
    state = clone.__dict__
    state["_parameters"] = dict(module._parameters)
    state["_buffers"] = dict(module._buffers)
    state["_modules"] = {name: None if child is None else shared_copy(child) for name, child in module._modules.items()}
    for hooks in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
                  "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks"):
        if hooks in state:
            state[hooks] = OrderedDict()
    return clone


class CachedPosition(nn.Module):
    """A position encoding whose result for an unpadded batch is kept per (batch, height, width, device, dtype).

    Padded batches (a mask with True entries) are computed every time: their encoding depends on the padding.
    """

    def __init__(self, encoding: nn.Module, capacity: int = POSITION_CACHE_SIZES) -> None:
        super().__init__()
        self.encoding = encoding
        self.capacity = capacity
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def forward(self, tensor_list: NestedTensor) -> Tensor:
        x, mask = tensor_list.tensors, tensor_list.mask
        if mask is not None and bool(mask.any()):
            return self.encoding(tensor_list)
        key = (x.shape[0], *x.shape[-2:], x.device, x.dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = self.encoding(tensor_list)
            self._cache[key] = cached
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return cached


class Float32Head(nn.Module):
    """Runs an output head in float32 outside autocast (class logits and boxes keep full precision)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())


def _replace_modules(root: nn.Module, precision: str) -> dict[str, int]:
    """Swap the modules of ``root`` (a shared copy) for their fast equivalents; returns counts per kind."""
    counts = {"backbone": 0, "attention": 0, "convolution": 0, "position": 0, "head": 0}
    dtype = COMPUTE_DTYPES[precision]
    for module in list(root.modules()):
        if isinstance(module, Backbone) and fusable_body(module.body):
            module.body = FusedResNetBody(module.body, compute_dtype=dtype)
            counts["backbone"] += 1
        if isinstance(module, Joiner) and not isinstance(module[1], CachedPosition):
            module[1] = CachedPosition(module[1])
            counts["position"] += 1
        if isinstance(getattr(module, "input_proj", None), nn.Conv2d):
            module.input_proj = FusedConv(module.input_proj)
            counts["convolution"] += 1
        if precision != "fp32":
            for name in HEAD_NAMES:
                if isinstance(getattr(module, name, None), nn.Module) and not isinstance(getattr(module, name), Float32Head):
                    setattr(module, name, Float32Head(getattr(module, name)))
                    counts["head"] += 1
        for name, child in list(module.named_children()):
            if supports_fast_attention(child):
                setattr(module, name, FastAttention(child))
                counts["attention"] += 1
    return counts


_warned_slow_bf16: list[bool] = []  # the slow-bf16 warning is given once per process


def _check_device_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"--precision fp16 runs on CUDA only (the model is on {device}); use bf16 on a CPU")
    if (precision == "bf16" and device.type == "cpu" and not _warned_slow_bf16
            and not torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        _warned_slow_bf16.append(True)
        log.warning("this CPU has no bfloat16 instructions (AVX-512-bf16/AMX): --precision bf16 will be slow")


class OptimizedModel(nn.Module):
    """The fast path of a DETR model (see the module docstring); build it with :func:`optimize`.

    ``forward(samples)`` → the model's output dict in float32, computed under ``torch.inference_mode``.
    ``faithful`` is the model it was made from; ``state_dict``/``load_state_dict`` are that model's
    (the original key layout), so saving an optimized model saves the model.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", compile: bool = False) -> None:
        super().__init__()
        if precision not in COMPUTE_DTYPES:
            raise ConfigError(f"precision: expected one of {', '.join(COMPUTE_DTYPES)}, got {precision!r}")
        self.__dict__["faithful"] = model  # not a submodule: its parameters are the fast module's own
        self.precision = precision
        self.compiled = compile
        fast = shared_copy(model).eval()
        self.replaced = _replace_modules(fast, precision)
        self.fast = fast
        # not a submodule either: the same modules as ``fast`` (compiled or not)
        self.__dict__["_run"] = torch.compile(fast, dynamic=None, options={"freezing": True}) if compile else fast

    # -- what callers read from a DETR model ------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.faithful.num_classes

    @property
    def num_queries(self) -> int:
        return self.faithful.num_queries

    @property
    def aux_loss(self) -> bool:
        return self.faithful.aux_loss

    @property
    def compute_dtype(self) -> torch.dtype:
        return COMPUTE_DTYPES[self.precision]

    def train(self, mode: bool = True) -> OptimizedModel:
        """Stays in eval mode: the fast path is for inference (train the model itself)."""
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.faithful.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        return self.faithful.load_state_dict(state_dict, strict=strict, assign=assign)

    def _autocast(self, device: torch.device) -> AbstractContextManager:
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device.type, dtype=self.compute_dtype)

    def forward(self, samples: NestedTensor | Tensor | Sequence[Tensor]) -> dict[str, Any]:
        samples = as_nested_tensor(samples)
        device = samples.tensors.device
        _check_device_precision(self.precision, device)
        with torch.inference_mode(), self._autocast(device):
            outputs = self._run(samples)
        return to_float(outputs)

    def extra_repr(self) -> str:
        replaced = ", ".join(f"{k} {v}" for k, v in self.replaced.items() if v)
        return f"precision={self.precision}, compile={self.compiled}, replaced: {replaced or 'nothing'}"


def optimize(model: nn.Module, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """The fast inference path of ``model`` (DETR, DETRsegm, AnchorDETR), sharing its weights.

    ``precision``: ``fp32`` (outputs within 1e-4 of the model's), ``bf16`` (bfloat16 backbone and
    transformer, float32 heads), ``fp16`` (CUDA only) or ``faithful`` (``model`` itself, returned
    unchanged). ``compile``: also ``torch.compile`` the fast module. The model is left as it is
    (modes, modules, weights); the returned module is always in eval mode and computes no gradients.
    """
    check_precision(precision, "precision")
    if precision == FAITHFUL:
        if compile:
            raise ConfigError("compile needs a fast precision (fp32, bf16 or fp16), not faithful")
        return model
    if isinstance(model, OptimizedModel):
        model = model.faithful
    if not isinstance(model, nn.Module):
        raise ConfigError(f"optimize needs a PyTorch model, got {type(model).__name__} (an exported model runs as it is)")
    parameter = next(model.parameters(), None)
    if parameter is not None:
        _check_device_precision(precision, parameter.device)
    return OptimizedModel(model, precision, compile)


def iter_fast_modules(model: nn.Module) -> Iterator[nn.Module]:
    """The replacement modules inside an optimized model (for tests and reports)."""
    for module in model.modules():
        if isinstance(module, FusedResNetBody | FusedConv | FastAttention | CachedPosition | Float32Head):
            yield module
