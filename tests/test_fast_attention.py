"""``FastAttention`` against ``nn.MultiheadAttention``'s own forward over the same weights.

Oracles: the wrapped module called as the faithful path calls it (``need_weights=True``: explicit
attention matrix, softmax, averaged weights) and as PyTorch's fused path (``need_weights=False``:
``scaled_dot_product_attention`` inside ``F.multi_head_attention_forward``). Inputs are sequence-first
[L, B, C] as in DETR: encoder-style self-attention (query and key the same tensor, value another),
cross-attention (query, key and value of different lengths), with key padding and attention masks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdetr.inference.fast_attention import FastAttention, supports_fast_attention

TOLERANCE = 1e-5  # float32: both sides compute the same function in a different order
DROPOUT = 0.1  # DETR's; eval mode must ignore it on both sides


def trained_like_attention(channels: int, heads: int, seed: int) -> nn.MultiheadAttention:
    """A sequence-first MHA with random non-zero biases (PyTorch starts them at zero, which would hide a slicing bug)."""
    torch.manual_seed(seed)
    attention = nn.MultiheadAttention(channels, heads, dropout=DROPOUT)
    with torch.no_grad():
        attention.in_proj_bias.normal_(0, 0.5)
        attention.out_proj.bias.normal_(0, 0.5)
    return attention.eval()


def padding_mask(batch: int, keys: int, padded: list[int]) -> torch.Tensor:
    """[B, S] bool, True = padding: the last ``padded[b]`` keys of batch element b (never all of them)."""
    mask = torch.zeros(batch, keys, dtype=torch.bool)
    for b, count in enumerate(padded):
        assert count < keys
        mask[b, keys - count:] = True
    return mask


def query_key_value(queries: int, keys: int, batch: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random query [L, B, C], key and value [S, B, C]."""
    return torch.randn(queries, batch, channels), torch.randn(keys, batch, channels), torch.randn(keys, batch, channels)


def compare(attention: nn.MultiheadAttention, query, key, value, **masks) -> dict[str, float]:
    """Max |Δ| of FastAttention's output against the module's own call with and without attention weights."""
    fast = FastAttention(attention)
    with torch.inference_mode():
        got, weights = fast(query, key, value, **masks)
        faithful, averaged = attention(query, key, value, need_weights=True, **masks)
        fused, none = attention(query, key, value, need_weights=False, **masks)
    assert weights is None and none is None and averaged is not None
    assert got.shape == faithful.shape == (query.shape[0], query.shape[1], attention.embed_dim)
    assert torch.isfinite(got).all()
    return {"need_weights=True": (got - faithful).abs().max().item(), "need_weights=False": (got - fused).abs().max().item(),
            "fused vs faithful": (fused - faithful).abs().max().item()}


def assert_close(differences: dict[str, float]) -> None:
    for name, difference in differences.items():
        assert difference <= TOLERANCE, f"{name}: max |Δ| {difference:.2e} > {TOLERANCE:.0e}"


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "key-padding"])
def test_self_attention_query_is_key_matches_multihead_attention(masked):
    channels, heads, batch, tokens = 64, 8, 2, 37
    attention = trained_like_attention(channels, heads, seed=0)
    torch.manual_seed(1)
    source = torch.randn(tokens, batch, channels)
    position = torch.randn(tokens, batch, channels)
    query = source + position  # the encoder: query and key are this one tensor, value is the source
    masks = {"key_padding_mask": padding_mask(batch, tokens, [0, 11])} if masked else {}
    assert_close(compare(attention, query, query, source, **masks))


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "key-padding"])
def test_cross_attention_different_lengths_matches_multihead_attention(masked):
    channels, heads, batch, queries, keys = 64, 4, 3, 10, 29
    attention = trained_like_attention(channels, heads, seed=2)
    torch.manual_seed(3)
    query = torch.randn(queries, batch, channels)
    memory = torch.randn(keys, batch, channels)
    key = memory + torch.randn(keys, batch, channels)  # the decoder: memory + pos as key, memory as value
    masks = {"key_padding_mask": padding_mask(batch, keys, [5, 0, 20])} if masked else {}
    assert_close(compare(attention, query, key, memory, **masks))


def test_boolean_attn_mask_with_key_padding_matches_multihead_attention():
    channels, heads, batch, queries, keys = 32, 4, 2, 9, 13
    attention = trained_like_attention(channels, heads, seed=4)
    torch.manual_seed(5)
    query, key, value = query_key_value(queries, keys, batch, channels)
    blocked = torch.rand(queries, keys) < 0.3  # [L, S], True = may not attend
    blocked[:, 0] = False  # every query keeps a key the padding leaves
    assert_close(compare(attention, query, key, value, attn_mask=blocked, key_padding_mask=padding_mask(batch, keys, [3, 6])))


def test_additive_per_head_attn_mask_matches_multihead_attention():
    channels, heads, batch, queries, keys = 32, 4, 2, 9, 13
    attention = trained_like_attention(channels, heads, seed=6)
    torch.manual_seed(7)
    query, key, value = query_key_value(queries, keys, batch, channels)
    additive = torch.randn(batch * heads, queries, keys)  # [B·H, L, S], added to the scores
    assert_close(compare(attention, query, key, value, attn_mask=additive))


def test_detr_encoder_shape_matches_multihead_attention():
    """DETR's encoder on an 800 × 1066 image (stride 32: 25 × 34 = 850 tokens), d 256, 8 heads, one padded batch element."""
    channels, heads, batch, tokens = 256, 8, 2, 850
    attention = trained_like_attention(channels, heads, seed=8)
    torch.manual_seed(9)
    source, position = torch.randn(tokens, batch, channels), torch.randn(tokens, batch, channels)
    query = source + position
    assert_close(compare(attention, query, query, source, key_padding_mask=padding_mask(batch, tokens, [0, 170])))


def test_unsupported_layouts_are_refused():
    assert not supports_fast_attention(nn.MultiheadAttention(32, 4, batch_first=True))
    assert not supports_fast_attention(nn.MultiheadAttention(32, 4, kdim=16, vdim=16))
    assert not supports_fast_attention(nn.MultiheadAttention(32, 4, add_bias_kv=True))
    assert not supports_fast_attention(nn.Linear(32, 32))
    with pytest.raises(ValueError):
        FastAttention(nn.MultiheadAttention(32, 4, batch_first=True))
