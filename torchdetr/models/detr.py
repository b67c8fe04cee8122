"""The DETR detector: backbone → 1x1 projection → transformer → class head and box MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import NestedTensor, as_nested_tensor
from .backbone import Joiner
from .position_encoding import box_sine_encoding
from .transformer import Transformer

Outputs = dict[str, Tensor | list[dict[str, Tensor]]]


class MLP(nn.Module):
    """A plain multi-layer perceptron with ReLU between layers (the box head uses 3 layers)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim, *hidden], [*hidden, output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


class DETR(nn.Module):
    """DEtection TRansformer.

    ``forward(samples)`` takes a NestedTensor (images [B, 3, H, W] + mask [B, H, W], True = padding),
    a list of [3, H_i, W_i] images, or a [B, 3, H, W] tensor, and returns a dict with

    - ``pred_logits`` [B, Q, K+1]: class logits, the last class is "no object";
    - ``pred_boxes`` [B, Q, 4]: (cx, cy, w, h) in [0, 1], relative to each unpadded image;
    - ``aux_outputs`` (when ``aux_loss``): the same two entries for every decoder layer but the last.
    """

    def __init__(
        self,
        backbone: Joiner,
        transformer: Transformer,
        num_classes: int,
        num_queries: int,
        aux_loss: bool = False,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.aux_loss = aux_loss

    @property
    def num_classes(self) -> int:
        """K: the class head has K+1 outputs."""
        return self.class_embed.out_features - 1

    @property
    def query_dim(self) -> int:
        """Size of one query in ``forward_queries``: a position embedding of ``hidden_dim``."""
        return self.query_embed.embedding_dim

    def new_query_embedding(self, num: int) -> nn.Embedding:
        """``num`` extra queries initialised like the model's own (for training-only query groups)."""
        return nn.Embedding(num, self.query_dim)

    def box_to_query(self, boxes: Tensor, box_pos: nn.Module | None) -> Tensor:
        """Denoising queries' positions from (noised) boxes [..., 4]: ``box_pos`` MLP of their sine encoding."""
        return box_pos(box_sine_encoding(boxes))

    def forward(self, samples: NestedTensor | Tensor | Sequence[Tensor]) -> Outputs:
        samples = as_nested_tensor(samples)
        features, pos = self.backbone(samples)
        src, mask = features[-1].decompose()
        hs = self.transformer(self.input_proj(src), mask, self.query_embed.weight, pos[-1])[0]
        return self.predict_from_decoder(hs)

    def forward_queries(
        self,
        samples: NestedTensor | Tensor | Sequence[Tensor],
        prefix_tgt: Tensor | None = None,
        prefix_query: Tensor | None = None,
        suffix_query: Tensor | None = None,
        tgt_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Decode extra queries together with the model's own (training-only query groups/denoising).

        Decoder queries are ``[prefix (P) | own (Q) | suffix (S)]``: ``prefix_tgt`` [P, B, C] content and
        ``prefix_query`` [P, B, D] positions, ``suffix_query`` [S, D] positions (content zero), with
        D = ``query_dim``; ``tgt_mask`` [N, N] (True = blocked) restricts their self-attention.
        Returns ``(outputs_class [L, B, N, K+1], outputs_coord [L, B, N, 4], extras)`` where ``extras``
        holds the encoder ``memory`` [B, C, h, w] and its padding ``mask`` [B, h, w].
        """
        samples = as_nested_tensor(samples)
        features, pos = self.backbone(samples)
        src, mask = features[-1].decompose()
        batch = src.shape[0]
        queries = self.query_embed.weight
        if suffix_query is not None:
            queries = torch.cat([queries, suffix_query], dim=0)
        queries = queries.unsqueeze(1).repeat(1, batch, 1)
        tgt = torch.zeros_like(queries)
        if prefix_query is not None:
            queries = torch.cat([prefix_query, queries], dim=0)
            tgt = torch.cat([prefix_tgt, tgt], dim=0)
        hs, memory = self.transformer(self.input_proj(src), mask, queries, pos[-1], tgt=tgt, tgt_mask=tgt_mask)
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid(), {"memory": memory, "mask": mask}

    def predict_from_decoder(self, hs: Tensor) -> Outputs:
        """Decoder states [L, B, Q, C] → the output dict (heads shared by all layers)."""
        return make_outputs(self.class_embed(hs), self.bbox_embed(hs).sigmoid(), self.aux_loss)


def make_outputs(outputs_class: Tensor, outputs_coord: Tensor, aux_loss: bool) -> Outputs:
    """Per-layer predictions [L, B, Q, *] → ``{"pred_logits", "pred_boxes"[, "aux_outputs"]}`` of the last layer."""
    out: Outputs = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
    if aux_loss:
        out["aux_outputs"] = aux_outputs(outputs_class, outputs_coord)
    return out


def aux_outputs(outputs_class: Tensor, outputs_coord: Tensor) -> list[dict[str, Tensor]]:
    """Per-layer dicts for every decoder layer but the last: [L, B, Q, *] → L-1 dicts."""
    return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]
