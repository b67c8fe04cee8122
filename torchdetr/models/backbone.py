"""ResNet backbone (torchvision) with frozen/trainable normalisation, joined with a position encoding."""

from __future__ import annotations

import logging
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from ..errors import ConfigError, MissingFileError
from ..structures import NestedTensor
from .position_encoding import build_position_encoding
from .weight_files import download_weights, read_weights_file

log = logging.getLogger(__name__)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
GROUP_NORM_GROUPS = 32


def _norm_layer(kind: str) -> type[nn.Module] | partial:
    if kind == "frozen":
        return FrozenBatchNorm2d
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "group":
        return partial(_group_norm)
    raise ConfigError(f"--backbone_norm: unknown kind {kind!r} (frozen, batch or group)")


def _group_norm(num_channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(GROUP_NORM_GROUPS, num_channels), num_channels)


def _dilate_basic_layer4(body: nn.Module) -> None:
    """DC5 for BasicBlock ResNets (torchvision supports it only for Bottleneck ones).

    Same rule as torchvision's ``replace_stride_with_dilation``: layer4 keeps stride 1, its first
    block uses dilation 1, later blocks dilation 2 (padding 2). Weights are unchanged.
    """
    first, *rest = body.layer4
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    for block in rest:
        for conv in (block.conv1, block.conv2):
            conv.dilation = (2, 2)
            conv.padding = (2, 2)


class Backbone(nn.Module):
    """A torchvision ResNet without its classifier, returning the last (or all four) stages.

    Input: NestedTensor (images [B, 3, H, W], mask [B, H, W]). Output: ordered dict of
    NestedTensor feature maps ("0".."3" for layer1..layer4, or only "0" for layer4), each with
    the padding mask resized (nearest) to the feature map: stride 32 for layer4 (16 with DC5).
    """

    def __init__(
        self,
        name: str,
        train_backbone: bool,
        return_interm_layers: bool,
        dilation: bool,
        norm: str = "frozen",
        train_all_layers: bool = False,
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ConfigError(f"--backbone: unknown backbone {name!r}; choose one of {', '.join(RESNETS)}")
        basic = name in ("resnet18", "resnet34")
        body = getattr(torchvision.models, name)(
            weights=None, replace_stride_with_dilation=[False, False, dilation and not basic], norm_layer=_norm_layer(norm)
        )
        if dilation and basic:
            _dilate_basic_layer4(body)
        trainable_stages = ("layer1", "layer2", "layer3", "layer4") if train_all_layers else ("layer2", "layer3", "layer4")
        for param_name, parameter in body.named_parameters():
            stage_trainable = train_all_layers or any(stage in param_name for stage in trainable_stages)
            if not train_backbone or not stage_trainable:
                parameter.requires_grad_(False)
        if return_interm_layers:
            return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
        else:
            return_layers = {"layer4": "0"}
        self.body = IntermediateLayerGetter(body, return_layers=return_layers)
        self.num_channels = 512 if name in ("resnet18", "resnet34") else 2048
        expansion = 1 if name in ("resnet18", "resnet34") else 4
        # channels of layer1..layer4, used by the mask head's FPN adapters
        self.stage_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]

    def forward(self, tensor_list: NestedTensor) -> dict[str, NestedTensor]:
        features = self.body(tensor_list.tensors)
        mask = tensor_list.mask
        out: dict[str, NestedTensor] = OrderedDict()
        for name, x in features.items():
            if mask is None:
                resized = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.bool, device=x.device)
            else:
                resized = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out[name] = NestedTensor(x, resized)
        return out


class Joiner(nn.Sequential):
    """``backbone.0`` = Backbone, ``backbone.1`` = position encoding (the original's key layout)."""

    def __init__(self, backbone: Backbone, position_embedding: nn.Module) -> None:
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels
        self.stage_channels = backbone.stage_channels

    def forward(self, tensor_list: NestedTensor) -> tuple[list[NestedTensor], list[Tensor]]:
        """→ (feature maps, position encodings [B, hidden_dim, H_l, W_l]) per returned stage."""
        features = self[0](tensor_list)
        out: list[NestedTensor] = []
        pos: list[Tensor] = []
        for x in features.values():
            out.append(x)
            pos.append(self[1](x).to(x.tensors.dtype))
        return out, pos


def build_backbone(
    *,
    backbone: str = "resnet50",
    lr_backbone: float = 1e-5,
    masks: bool = False,
    dilation: bool = False,
    hidden_dim: int = 256,
    position_embedding: str = "sine",
    norm: str = "frozen",
    train_all_layers: bool = False,
) -> Joiner:
    """Backbone + position encoding with random weights (see ``load_backbone_weights``)."""
    position = build_position_encoding(hidden_dim, position_embedding)
    body = Backbone(backbone, lr_backbone > 0, masks, dilation, norm=norm, train_all_layers=train_all_layers)
    return Joiner(body, position)


def imagenet_state_dict(name: str, source: str = "imagenet") -> dict[str, Tensor]:
    """ResNet weights as a torchvision state dict: ``imagenet`` (torchvision V1 weights, the ones
    the original used, downloaded once into torch's cache) or a local ``.pth``/``.safetensors`` file.

    A download failure is a ``DownloadError``; a missing or unreadable local file (a corrupt cached
    download included) is a ``MissingFileError`` / ``InputFileError`` naming the file.
    """
    if source == "imagenet":
        url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
        path = download_weights(url, what=f"the ImageNet weights of {name}",
                                offline_hint="pass --backbone_weights PATH to a local copy (or none for random weights)")
    else:
        path = Path(source)
        if not path.is_file():
            raise MissingFileError(f"--backbone_weights: no such file {source!r} (use imagenet, none or a path)")
    state = read_weights_file(path, what="backbone weights file")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def load_backbone_weights(joiner: Joiner, name: str, source: str) -> list[str]:
    """Load ImageNet (or file) weights into the ResNet body; returns keys left at random values.

    Classifier (``fc.*``) entries are ignored. With GroupNorm the BatchNorm entries cannot be
    used and are reported as skipped.
    """
    if source == "none":
        return []
    state = imagenet_state_dict(name, source)
    # accept both bare torchvision keys and our own "backbone.0.body." prefixed keys
    prefix = "backbone.0.body."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    body = joiner[0].body
    own = body.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    result = body.load_state_dict(usable, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing:
        log.warning("backbone weights from %s left %d entries at random values (e.g. %s)",
                    source, len(missing), ", ".join(missing[:3]))
    return missing
