"""Multi-head attention without its unused weights: ``nn.MultiheadAttention`` called with ``need_weights=False``.

The faithful path calls ``nn.MultiheadAttention`` with its default ``need_weights=True``: it computes
the [B·heads, L, S] attention matrix explicitly (``baddbmm``, softmax, ``bmm``) and averages it over
heads for a result DETR throws away. With ``need_weights=False`` PyTorch computes the same function
with the fused ``scaled_dot_product_attention`` kernel (flash attention on CPU and GPU) over the same
parameters (``in_proj_weight`` [3C, C] packed q, k, v as in the original checkpoints; ``out_proj``).
``tests/test_fast_attention.py`` holds it to the faithful call within 1e-5 (self- and cross-attention,
padding and attention masks, DETR's encoder shape).
"""

from __future__ import annotations

from torch import Tensor, nn


def supports_fast_attention(attention: nn.Module) -> bool:
    """Whether ``attention`` is an ``nn.MultiheadAttention`` of the layout ``FastAttention`` computes."""
    return (isinstance(attention, nn.MultiheadAttention) and attention._qkv_same_embed_dim and not attention.batch_first
            and attention.bias_k is None and not attention.add_zero_attn)


class FastAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward (sequence-first [L, B, C]) without attention weights; returns ``(output, None)``.

    Inference only: the fast module runs in eval mode, where the wrapped module applies no dropout.
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
        """query [L, B, C], key and value [S, B, C] → ([L, B, C], None), whatever ``need_weights`` asks."""
        output, _ = self.attention(query, key, value, key_padding_mask=key_padding_mask, need_weights=False,
                                   attn_mask=attn_mask, is_causal=is_causal)
        return output, None
