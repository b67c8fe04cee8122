"""Multi-head attention through ``F.scaled_dot_product_attention``, with ``nn.MultiheadAttention``'s own parameters.

The faithful path calls ``nn.MultiheadAttention`` with its default ``need_weights=True``: it computes
the [B·heads, L, S] attention matrix explicitly (``baddbmm``, softmax, ``bmm``) and averages it over
heads for a result DETR throws away. ``FastAttention`` computes the same function with the fused
kernel (flash attention on CPU and GPU), projects query and key together when they are the same
tensor (encoder self-attention), and returns no weights. Parameters are the wrapped module's
(``in_proj_weight`` [3C, C] packed q, k, v as in the original checkpoints; ``out_proj``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def supports_fast_attention(attention: nn.Module) -> bool:
    """Whether ``attention`` is an ``nn.MultiheadAttention`` of the layout ``FastAttention`` computes."""
    return (isinstance(attention, nn.MultiheadAttention) and attention._qkv_same_embed_dim and not attention.batch_first
            and attention.bias_k is None and not attention.add_zero_attn)


def _allowed_mask(key_padding_mask: Tensor | None, attn_mask: Tensor | None, batch: int, heads: int,
                  queries: int, keys: int, dtype: torch.dtype) -> Tensor | None:
    """The SDPA mask [B, 1|H, 1|L, S]: bool (True = may attend) or additive float, from MHA's two masks.

    ``key_padding_mask`` [B, S] (True = padding); ``attn_mask`` [L, S] or [B·H, L, S], bool (True = blocked)
    or additive float.
    """
    blocked: Tensor | None = None  # bool, True = may not attend
    additive: Tensor | None = None  # float, added to the scores
    if attn_mask is not None:
        shaped = attn_mask.view(batch, heads, queries, keys) if attn_mask.dim() == 3 else attn_mask.view(1, 1, queries, keys)
        if shaped.dtype == torch.bool:
            blocked = shaped
        else:
            additive = shaped.to(dtype)
    if key_padding_mask is not None:
        padding = key_padding_mask.view(batch, 1, 1, keys)
        if padding.dtype == torch.bool:
            blocked = padding if blocked is None else blocked | padding
        else:
            additive = padding.to(dtype) if additive is None else additive + padding.to(dtype)
    if additive is None:
        return None if blocked is None else ~blocked
    return additive if blocked is None else additive.masked_fill(blocked, float("-inf"))


class FastAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward (sequence-first [L, B, C]) through SDPA; returns ``(output, None)``.

    Inference only: dropout is not applied (the wrapped module's ``dropout`` is for training).
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        if not supports_fast_attention(attention):
            raise ValueError("FastAttention needs a sequence-first nn.MultiheadAttention with packed q/k/v projections")
        self.attention = attention

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        """query [L, B, C], key and value [S, B, C] → ([L, B, C], None)."""
        mha = self.attention
        channels, heads = mha.embed_dim, mha.num_heads
        head_dim = channels // heads
        weight, bias = mha.in_proj_weight, mha.in_proj_bias
        if query is key:
            q, k = F.linear(query, weight[:2 * channels], None if bias is None else bias[:2 * channels]).chunk(2, dim=-1)
        else:
            q = F.linear(query, weight[:channels], None if bias is None else bias[:channels])
            k = F.linear(key, weight[channels:2 * channels], None if bias is None else bias[channels:2 * channels])
        v = F.linear(value, weight[2 * channels:], None if bias is None else bias[2 * channels:])
        length, batch = query.shape[:2]
        keys = key.shape[0]
        q = q.reshape(length, batch, heads, head_dim).permute(1, 2, 0, 3)  # [B, H, L, D]
        k = k.reshape(keys, batch, heads, head_dim).permute(1, 2, 0, 3)
        v = v.reshape(keys, batch, heads, head_dim).permute(1, 2, 0, 3)
        mask = _allowed_mask(key_padding_mask, attn_mask, batch, heads, length, keys, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
        out = out.permute(2, 0, 1, 3).reshape(length, batch, channels)
        return F.linear(out, mha.out_proj.weight, mha.out_proj.bias), None
