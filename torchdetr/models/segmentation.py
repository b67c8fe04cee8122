"""The panoptic mask head: per-query attention maps over the encoder memory, refined by a small FPN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import NestedTensor
from .detr import DETR, Encoded, Outputs, make_outputs

GROUP_NORM_GROUPS = 8


def _expand(tensor: Tensor, length: int) -> Tensor:
    """[B, C, H, W] → [B*length, C, H, W], each image repeated ``length`` times (once per query)."""
    return tensor.unsqueeze(1).repeat(1, int(length), 1, 1, 1).flatten(0, 1)


class MHAttentionMap(nn.Module):
    """Attention weights of each query over the feature map (softmax over heads × H × W)."""

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.k_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        nn.init.zeros_(self.k_linear.bias)
        nn.init.zeros_(self.q_linear.bias)
        nn.init.xavier_uniform_(self.k_linear.weight)
        nn.init.xavier_uniform_(self.q_linear.weight)
        self.normalize_fact = float(hidden_dim / self.num_heads) ** -0.5

    def forward(self, q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
        """q [B, Q, C], k [B, C, H, W], mask [B, H, W] → weights [B, Q, heads, H, W]."""
        q = self.q_linear(q)
        k = F.conv2d(k, self.k_linear.weight.unsqueeze(-1).unsqueeze(-1), self.k_linear.bias)
        head_dim = self.hidden_dim // self.num_heads
        qh = q.view(q.shape[0], q.shape[1], self.num_heads, head_dim)
        kh = k.view(k.shape[0], self.num_heads, head_dim, k.shape[-2], k.shape[-1])
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * self.normalize_fact, kh)
        if mask is not None:
            weights = weights.masked_fill(mask.unsqueeze(1).unsqueeze(1), float("-inf"))
        weights = F.softmax(weights.flatten(2), dim=-1).view(weights.size())
        return self.dropout(weights)


class MaskHeadSmallConv(nn.Module):
    """Conv head upsampling the attention maps with the backbone's layer3/2/1 features (FPN style).

    Input: projected features [B, C, H/32, W/32], attention maps [B, Q, heads, H/32, W/32],
    FPN features (layer3, layer2, layer1). Output: mask logits [B*Q, 1, H/4, W/4].
    """

    def __init__(self, dim: int, fpn_dims: Sequence[int], context_dim: int) -> None:
        super().__init__()
        inter_dims = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16, context_dim // 64]
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(GROUP_NORM_GROUPS, dim)
        self.lay2 = nn.Conv2d(dim, inter_dims[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(GROUP_NORM_GROUPS, inter_dims[1])
        self.lay3 = nn.Conv2d(inter_dims[1], inter_dims[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(GROUP_NORM_GROUPS, inter_dims[2])
        self.lay4 = nn.Conv2d(inter_dims[2], inter_dims[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(GROUP_NORM_GROUPS, inter_dims[3])
        self.lay5 = nn.Conv2d(inter_dims[3], inter_dims[4], 3, padding=1)
        self.gn5 = nn.GroupNorm(GROUP_NORM_GROUPS, inter_dims[4])
        self.out_lay = nn.Conv2d(inter_dims[4], 1, 3, padding=1)
        self.dim = dim
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter_dims[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter_dims[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter_dims[3], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor, bbox_mask: Tensor, fpns: Sequence[Tensor]) -> Tensor:
        x = torch.cat([_expand(x, bbox_mask.shape[1]), bbox_mask.flatten(0, 1)], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        for adapter, lay, gn, fpn in ((self.adapter1, self.lay3, self.gn3, fpns[0]),
                                      (self.adapter2, self.lay4, self.gn4, fpns[1]),
                                      (self.adapter3, self.lay5, self.gn5, fpns[2])):
            cur_fpn = adapter(fpn)
            if cur_fpn.size(0) != x.size(0):
                cur_fpn = _expand(cur_fpn, x.size(0) // cur_fpn.size(0))
            x = cur_fpn + F.interpolate(x, size=cur_fpn.shape[-2:], mode="nearest")
            x = F.relu(gn(lay(x)))
        return self.out_lay(x)


class DETRsegm(nn.Module):
    """DETR with the mask head: adds ``pred_masks`` [B, Q, H/4, W/4] (logits) to DETR's outputs.

    State-dict keys: the detector under ``detr.``, then ``bbox_attention.`` and ``mask_head.``.
    """

    def __init__(self, detr: DETR, freeze_detr: bool = False) -> None:
        super().__init__()
        self.detr = detr
        self.freeze_detr = freeze_detr
        if freeze_detr:
            for p in self.parameters():
                p.requires_grad_(False)
        hidden_dim, nheads = detr.transformer.d_model, detr.transformer.nhead
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, nheads, dropout=0.0)
        stage_channels = detr.backbone.stage_channels
        fpn_dims = [stage_channels[2], stage_channels[1], stage_channels[0]]
        self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, fpn_dims, hidden_dim)

    def train(self, mode: bool = True) -> DETRsegm:
        """As ``nn.Module.train``; a frozen detector's batch-norm layers (``--backbone_norm batch``) stay in eval
        mode, so that their running statistics stay those of the detector's checkpoint."""
        super().train(mode)
        if self.freeze_detr:
            for module in self.detr.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @property
    def num_queries(self) -> int:
        return self.detr.num_queries

    @property
    def num_classes(self) -> int:
        return self.detr.num_classes

    @property
    def aux_loss(self) -> bool:
        return self.detr.aux_loss

    def forward(self, samples: NestedTensor | Tensor | Sequence[Tensor]) -> Outputs:
        encoded = self.detr.encode(samples)
        decoded = self.detr.decode(encoded)
        out = make_outputs(decoded.logits, decoded.boxes, self.detr.aux_loss)
        out["pred_masks"] = self.predict_masks(encoded, decoded.hidden[-1])
        return out

    def predict_masks(self, encoded: Encoded, hidden: Tensor) -> Tensor:
        """Mask logits [B, Q, H/4, W/4] of the last decoder layer's states ``hidden`` [B, Q, C]."""
        bbox_mask = self.bbox_attention(hidden, encoded.memory_map, mask=encoded.mask)
        features = encoded.features
        seg_masks = self.mask_head(encoded.src, bbox_mask, [features[2].tensors, features[1].tensors, features[0].tensors])
        return seg_masks.view(hidden.shape[0], hidden.shape[1], seg_masks.shape[-2], seg_masks.shape[-1])
