"""The DETR transformer: an encoder over the H*W feature tokens and a decoder over the object queries.

Differences from ``torch.nn.Transformer`` that DETR relies on: position encodings are added to
queries and keys at every layer (not once at the input), the decoder returns the normalised
output of every layer (for auxiliary losses), and post-norm models keep a final decoder norm.
Sequences are sequence-first ([S, B, C]) as in the original.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _with_pos(tensor: Tensor, pos: Tensor | None) -> Tensor:
    return tensor if pos is None else tensor + pos


def _activation(name: str):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "glu":
        return F.glu
    raise ValueError(f"unknown activation {name!r} (relu, gelu or glu)")


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class TransformerEncoderLayer(nn.Module):
    """Self-attention + feed-forward, post-norm (the original default) or pre-norm."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _activation(activation)
        self.normalize_before = normalize_before

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
    ) -> Tensor:
        """src [HW, B, C], key padding mask [B, HW] (True = ignore), pos [HW, B, C] → [HW, B, C]."""
        if self.normalize_before:
            src2 = self.norm1(src)
            q = k = _with_pos(src2, pos)
            src2 = self.self_attn(q, k, value=src2, attn_mask=src_mask,
                                  key_padding_mask=src_key_padding_mask)[0]
            src = src + self.dropout1(src2)
            src2 = self.norm2(src)
            src2 = self.linear2(self.dropout(self.activation(self.linear1(src2))))
            return src + self.dropout2(src2)
        q = k = _with_pos(src, pos)
        src2 = self.self_attn(q, k, value=src, attn_mask=src_mask,
                              key_padding_mask=src_key_padding_mask)[0]
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerDecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the encoder memory, feed-forward."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _activation(activation)
        self.normalize_before = normalize_before

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> Tensor:
        """tgt [Q, B, C], memory [HW, B, C], ``tgt_mask`` [Q, Q] or [B*heads, Q, Q] (True = blocked)."""
        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = k = _with_pos(tgt2, query_pos)
            tgt2 = self.self_attn(q, k, value=tgt2, attn_mask=tgt_mask,
                                  key_padding_mask=tgt_key_padding_mask)[0]
            tgt = tgt + self.dropout1(tgt2)
            tgt2 = self.norm2(tgt)
            tgt2 = self.multihead_attn(query=_with_pos(tgt2, query_pos), key=_with_pos(memory, pos),
                                       value=memory, attn_mask=memory_mask,
                                       key_padding_mask=memory_key_padding_mask)[0]
            tgt = tgt + self.dropout2(tgt2)
            tgt2 = self.norm3(tgt)
            tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt2))))
            return tgt + self.dropout3(tgt2)
        q = k = _with_pos(tgt, query_pos)
        tgt2 = self.self_attn(q, k, value=tgt, attn_mask=tgt_mask,
                              key_padding_mask=tgt_key_padding_mask)[0]
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.multihead_attn(query=_with_pos(tgt, query_pos), key=_with_pos(memory, pos),
                                   value=memory, attn_mask=memory_mask,
                                   key_padding_mask=memory_key_padding_mask)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerEncoder(nn.Module):
    """``num_layers`` encoder layers, then ``norm`` (present only for pre-norm models)."""

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
    ) -> Tensor:
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, pos=pos)
        if self.norm is not None:
            output = self.norm(output)
        return output


class TransformerDecoder(nn.Module):
    """``num_layers`` decoder layers; returns [L, Q, B, C] (every layer, normalised) or [1, Q, B, C]."""

    def __init__(
        self,
        decoder_layer: TransformerDecoderLayer,
        num_layers: int,
        norm: nn.Module | None = None,
        return_intermediate: bool = False,
    ) -> None:
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> Tensor:
        output = tgt
        intermediate: list[Tensor] = []
        for layer in self.layers:
            output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask,
                           memory_key_padding_mask=memory_key_padding_mask, pos=pos, query_pos=query_pos)
            if self.return_intermediate:
                intermediate.append(self.norm(output) if self.norm is not None else output)
        if self.norm is not None:
            output = self.norm(output)
            if self.return_intermediate:
                intermediate[-1] = output
        if self.return_intermediate:
            return torch.stack(intermediate)
        return output.unsqueeze(0)


def to_sequence(feature_map: Tensor) -> Tensor:
    """A feature map [B, C, h, w] → the token sequence [h*w, B, C] (sequence-first, row by row)."""
    return feature_map.flatten(2).permute(2, 0, 1)


class Transformer(nn.Module):
    """Encoder-decoder of DETR.

    ``encode`` runs the encoder over the feature tokens, ``decode`` the decoder over the queries;
    ``forward(src [B, C, H, W], mask [B, H, W], query_embed [Q, C], pos_embed [B, C, H, W])`` is the
    original's one-call API and returns ``(hs [L, B, Q, C], memory [B, C, H, W])``. ``tgt_mask``
    (optional, [Q, Q] or [B*nhead, Q, Q], True = blocked) restricts query self-attention.
    """

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
        return_intermediate_dec: bool = False,
    ) -> None:
        super().__init__()
        encoder_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        encoder_norm = nn.LayerNorm(d_model) if normalize_before else None
        self.encoder = TransformerEncoder(encoder_layer, num_encoder_layers, encoder_norm)
        decoder_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        self.decoder = TransformerDecoder(decoder_layer, num_decoder_layers, nn.LayerNorm(d_model),
                                          return_intermediate=return_intermediate_dec)
        self._reset_parameters()
        self.d_model = d_model
        self.nhead = nhead

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def encode(self, src: Tensor, key_padding_mask: Tensor, pos: Tensor) -> Tensor:
        """Tokens [HW, B, C], padding [B, HW] (True = padding), positions [HW, B, C] → memory [HW, B, C]."""
        return self.encoder(src, src_key_padding_mask=key_padding_mask, pos=pos)

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        key_padding_mask: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        tgt_mask: Tensor | None = None,
    ) -> Tensor:
        """Queries ``tgt`` (content) and ``query_pos`` [N, B, C] over ``memory`` [HW, B, C] → hs [L, B, N, C]."""
        hs = self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_key_padding_mask=key_padding_mask,
                          pos=pos, query_pos=query_pos)
        return hs.transpose(1, 2)

    def forward(
        self,
        src: Tensor,
        mask: Tensor,
        query_embed: Tensor,
        pos_embed: Tensor,
        tgt: Tensor | None = None,
        tgt_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        bs, c, h, w = src.shape
        pos = to_sequence(pos_embed)
        if query_embed.dim() == 2:
            query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)
        key_padding_mask = mask.flatten(1)
        if tgt is None:
            tgt = torch.zeros_like(query_embed)
        memory = self.encode(to_sequence(src), key_padding_mask, pos)
        hs = self.decode(tgt, memory, key_padding_mask, pos, query_embed, tgt_mask)
        return hs, memory.permute(1, 2, 0).view(bs, c, h, w)


def build_transformer(
    *,
    hidden_dim: int = 256,
    dropout: float = 0.1,
    nheads: int = 8,
    dim_feedforward: int = 2048,
    enc_layers: int = 6,
    dec_layers: int = 6,
    pre_norm: bool = False,
) -> Transformer:
    """The transformer of ``main.py`` (intermediate decoder outputs always returned)."""
    return Transformer(
        d_model=hidden_dim,
        nhead=nheads,
        num_encoder_layers=enc_layers,
        num_decoder_layers=dec_layers,
        dim_feedforward=dim_feedforward,
        dropout=dropout,
        normalize_before=pre_norm,
        return_intermediate_dec=True,
    )
