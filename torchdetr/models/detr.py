"""The DETR detector: backbone → 1x1 projection → transformer → class head and box MLP.

One forward path serves every variant and every caller::

    encoded = model.encode(samples)           # backbone, projection, encoder        → Encoded
    decoded = model.decode(encoded, queries)  # decoder over the queries, then heads → Decoded
    outputs = make_outputs(decoded.logits, decoded.boxes, model.aux_loss)

``forward`` is exactly that with the model's own queries (``model.queries(encoded)``). Variants override
only what differs (``AnchorDETR``: its queries and its decoder loop); the mask head (``DETRsegm``) and
training-only queries (``training.queries``) call ``encode``/``decode`` instead of re-implementing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..structures import NestedTensor, as_nested_tensor
from .backbone import Joiner
from .heads import MLP, DenseOutputs
from .transformer import Transformer, to_sequence

Outputs = dict[str, Tensor | list[dict[str, Tensor]]]

__all__ = ["DETR", "MLP", "Decoded", "DecoderQueries", "Encoded", "Outputs", "aux_outputs", "make_outputs"]


@dataclass
class Encoded:
    """The encoder side of one forward pass: everything a decoder (or the mask head) reads.

    ``features``: the backbone's feature maps (NestedTensors, finest first; the last one is encoded);
    ``src`` [B, C, h, w]: the last map projected to ``hidden_dim``; ``mask`` [B, h, w] (True = padding);
    ``pos`` [h*w, B, C] and ``memory`` [h*w, B, C]: position encoding and encoder output, sequence-first;
    ``proposals``: per-cell predictions of a two-stage model's dense head (None for other models).
    """

    features: list[NestedTensor]
    src: Tensor
    mask: Tensor
    pos: Tensor
    memory: Tensor
    proposals: DenseOutputs | None = None

    @property
    def key_padding_mask(self) -> Tensor:
        """[B, h*w]: ``mask`` flattened like the tokens."""
        return self.mask.flatten(1)

    @property
    def memory_map(self) -> Tensor:
        """[B, C, h, w]: the encoder output laid out as the feature map."""
        batch, channels, height, width = self.src.shape
        return self.memory.permute(1, 2, 0).view(batch, channels, height, width)


@dataclass
class DecoderQueries:
    """The decoder's N queries: ``position`` [N, B, D], ``content`` [N, B, C], ``attn_mask`` [N, N] or None.

    ``position`` is what the variant turns into positional queries: DETR's learned embeddings (D = C)
    or AnchorDETR's anchor boxes as logits (D = 4). ``content`` is the decoder's initial target (zeros
    for DETR's own queries). ``attn_mask`` (True = may not attend) restricts query self-attention.
    """

    position: Tensor
    content: Tensor
    attn_mask: Tensor | None = None

    def __len__(self) -> int:
        return self.position.shape[0]


@dataclass
class Decoded:
    """Per decoder layer: normalised states ``hidden`` [L, B, N, C], class ``logits`` [L, B, N, K+1] and
    ``boxes`` [L, B, N, 4] (cxcywh in [0, 1])."""

    hidden: Tensor
    logits: Tensor
    boxes: Tensor


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

    def forward(self, samples: NestedTensor | Tensor | Sequence[Tensor]) -> Outputs:
        decoded = self.decode(self.encode(samples))
        return make_outputs(decoded.logits, decoded.boxes, self.aux_loss)

    def encode(self, samples: NestedTensor | Tensor | Sequence[Tensor]) -> Encoded:
        """Backbone, 1x1 projection and transformer encoder over the last feature map."""
        features, pos = self.backbone(as_nested_tensor(samples))
        src, mask = features[-1].decompose()
        src = self.input_proj(src)
        pos_seq = to_sequence(pos[-1])
        memory = self.transformer.encode(to_sequence(src), mask.flatten(1), pos_seq)
        return Encoded(features=features, src=src, mask=mask, pos=pos_seq, memory=memory)

    def queries(self, encoded: Encoded) -> DecoderQueries:
        """The model's own Q queries: the learned position embeddings, zero content."""
        position = self.query_embed.weight.unsqueeze(1).repeat(1, encoded.src.shape[0], 1)
        return DecoderQueries(position=position, content=torch.zeros_like(position))

    def decode(self, encoded: Encoded, queries: DecoderQueries | None = None) -> Decoded:
        """Decode ``queries`` (default: the model's own) over the encoder memory; heads shared by all layers."""
        queries = queries if queries is not None else self.queries(encoded)
        hs = self.transformer.decode(queries.content, encoded.memory, encoded.key_padding_mask, encoded.pos,
                                     queries.position, queries.attn_mask)
        return Decoded(hidden=hs, logits=self.class_embed(hs), boxes=self.bbox_embed(hs).sigmoid())


def make_outputs(outputs_class: Tensor, outputs_coord: Tensor, aux_loss: bool) -> Outputs:
    """Per-layer predictions [L, B, Q, *] → ``{"pred_logits", "pred_boxes"[, "aux_outputs"]}`` of the last layer."""
    out: Outputs = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
    if aux_loss:
        out["aux_outputs"] = aux_outputs(outputs_class, outputs_coord)
    return out


def aux_outputs(outputs_class: Tensor, outputs_coord: Tensor) -> list[dict[str, Tensor]]:
    """Per-layer dicts for every decoder layer but the last: [L, B, Q, *] → L-1 dicts."""
    return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]
