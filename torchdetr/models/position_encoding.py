"""2-D position encodings of a feature map, as in the DETR paper (sine) or learned."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..structures import NestedTensor

LEARNED_GRID_SIZE = 50  # rows/columns of the learned embedding tables (feature maps up to 50x50)
BOX_SINE_TEMPERATURE = 10000
BOX_SINE_FEATS = 32  # sine/cosine features per box coordinate


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of (y, x), generalised from "Attention is all you need" to images.

    Half of the ``2 * num_pos_feats`` channels encode y, half encode x. With ``normalize`` the
    cumulative positions over the unpadded area are scaled to ``[0, scale]`` before encoding.
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000,
        normalize: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, tensor_list: NestedTensor) -> Tensor:
        """Feature map [B, C, H, W] + mask [B, H, W] → position encoding [B, 2*num_pos_feats, H, W]."""
        x, mask = tensor_list.tensors, tensor_list.mask
        if mask is None:
            mask = torch.zeros((x.shape[0], x.shape[2], x.shape[3]), dtype=torch.bool, device=x.device)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)

        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute encoding: a row table and a column table of ``LEARNED_GRID_SIZE`` entries."""

    def __init__(self, num_pos_feats: int = 256) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(LEARNED_GRID_SIZE, num_pos_feats)
        self.col_embed = nn.Embedding(LEARNED_GRID_SIZE, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, tensor_list: NestedTensor) -> Tensor:
        """Feature map [B, C, H, W] → position encoding [B, 2*num_pos_feats, H, W] (x half first)."""
        x = tensor_list.tensors
        h, w = x.shape[-2:]
        if h > LEARNED_GRID_SIZE or w > LEARNED_GRID_SIZE:
            raise ConfigError(
                f"learned position encoding covers feature maps up to {LEARNED_GRID_SIZE}x{LEARNED_GRID_SIZE}, "
                f"got {h}x{w}: use smaller images or --position_embedding sine"
            )
        i = torch.arange(w, device=x.device)
        j = torch.arange(h, device=x.device)
        x_emb = self.col_embed(i)
        y_emb = self.row_embed(j)
        pos = torch.cat(
            [x_emb.unsqueeze(0).repeat(h, 1, 1), y_emb.unsqueeze(1).repeat(1, w, 1)], dim=-1
        ).permute(2, 0, 1)
        return pos.unsqueeze(0).repeat(x.shape[0], 1, 1, 1)


def build_position_encoding(hidden_dim: int, kind: str = "sine") -> nn.Module:
    """The encoding named by ``--position_embedding`` ("sine"/"v2" or "learned"/"v3")."""
    num_pos_feats = hidden_dim // 2
    if kind in ("sine", "v2"):
        return PositionEmbeddingSine(num_pos_feats, normalize=True)
    if kind in ("learned", "v3"):
        return PositionEmbeddingLearned(num_pos_feats)
    raise ConfigError(f"--position_embedding: unknown kind {kind!r} (sine or learned)")


def box_sine_encoding(boxes: Tensor, feats: int = BOX_SINE_FEATS) -> Tensor:
    """Normalised cxcywh boxes [..., 4] → sine/cosine features [..., 4 * feats] (2π-scaled, as DETR)."""
    dim_t = torch.arange(feats, dtype=torch.float32, device=boxes.device)
    dim_t = BOX_SINE_TEMPERATURE ** (2 * (dim_t // 2) / feats)
    pos = boxes[..., None].float() * (2 * math.pi) / dim_t
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2)
