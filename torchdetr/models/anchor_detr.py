"""A DETR variant with anchor-box queries refined layer by layer (DAB-DETR style), for fast training.

Differences from DETR (Liu et al., "DAB-DETR: Dynamic Anchor Boxes are Better Queries for DETR", 2022):

- each query is a learnable anchor box (cx, cy, w, h) instead of an abstract position embedding;
  its positional query in the decoder is an MLP of the box's sine encoding (``ref_point_head``),
  scaled by the content (``query_scale``) from the second layer on;
- every decoder layer predicts a correction of its input box (``bbox_embed`` output added in
  inverse-sigmoid space), and the corrected box, detached, is the next layer's anchor;
- backbone, encoder, decoder layers and heads are DETR's own modules.

With ``two_stage`` (``--variant dab --two_stage``, the query selection of Deformable DETR's two-stage
mode and DINO) a dense head on the encoder memory (``enc_head``: class scores and a box per cell) is
part of the model: the boxes of the ``Q`` highest-scoring cells, detached, are the decoder's anchors, and
the content queries are learned (``tgt_embed``, DINO's "mixed" selection). Training supervises the dense
head one-to-many (``losses/dense.py``), which learns far faster than the set loss, so the decoder starts
from good proposals.

It is a separate model (``--variant dab``): its checkpoints have ``query_embed.weight`` [Q, 4]
(anchors in inverse-sigmoid space) plus ``ref_point_head.*`` and ``query_scale.*`` (and ``enc_head.*``,
``tgt_embed.*`` with two-stage). The default ``--variant detr`` is unchanged. Denoising queries feed
their noised boxes as anchors (DN-DAB-DETR).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..structures import NestedTensor
from .backbone import Joiner
from .detr import DETR, MLP, Decoded, DecoderQueries, Encoded
from .heads import LOGIT_EPS, DenseHead, DenseOutputs
from .position_encoding import box_sine_encoding
from .transformer import Transformer

INITIAL_ANCHOR_SIZE = 0.2  # w and h of the initial anchors, as a fraction of the image


__all__ = ["AnchorDETR", "init_anchors", "select_proposals"]


def init_anchors(embedding: nn.Embedding, generator: torch.Generator | None = None) -> None:
    """Anchor centres uniform over the image, sizes ``INITIAL_ANCHOR_SIZE`` (stored as logits)."""
    with torch.no_grad():
        n = embedding.weight.shape[0]
        centres = torch.rand(n, 2, generator=generator)
        sizes = torch.full((n, 2), INITIAL_ANCHOR_SIZE)
        embedding.weight.copy_(torch.logit(torch.cat([centres, sizes], dim=1), LOGIT_EPS))


def select_proposals(dense: DenseOutputs, num: int) -> Tensor:
    """The boxes [B, num, 4] of the ``num`` best-scoring valid cells (best class score), detached.

    With fewer cells than ``num`` (very small images) the best cells are reused in turn.
    """
    scores = dense.logits.max(-1).values.masked_fill(~dense.valid, float("-inf"))
    top = scores.topk(min(num, scores.shape[1]), dim=1).indices  # [B, num] (fewer: tiny maps)
    if top.shape[1] < num:
        # the learned content queries differ, so the duplicates do not collapse into one prediction
        top = top[:, torch.arange(num, device=top.device) % top.shape[1]]
    return torch.gather(dense.boxes, 1, top[..., None].expand(-1, -1, 4)).detach()


class AnchorDETR(DETR):
    """DETR with anchor-box queries and iterative box refinement; same inputs and outputs as ``DETR``.

    Overrides ``encode`` (two-stage: adds the dense head's proposals), ``queries`` (anchor logits
    [Q, B, 4] as positions) and ``decode`` (positional queries from the anchors, refined per layer).
    """

    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int, num_queries: int,
                 aux_loss: bool = False, two_stage: bool = False) -> None:
        super().__init__(backbone, transformer, num_classes, num_queries, aux_loss)
        self.two_stage = two_stage
        hidden_dim = transformer.d_model
        self.query_embed = nn.Embedding(num_queries, 4)
        init_anchors(self.query_embed)
        self.ref_point_head = MLP(2 * hidden_dim, hidden_dim, hidden_dim, 2)
        self.query_scale = MLP(hidden_dim, hidden_dim, hidden_dim, 2)
        # start every layer's correction at zero: the first predictions are the anchors themselves
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        if two_stage:
            self.enc_head = DenseHead(hidden_dim, num_classes)
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)

    def encode(self, samples: NestedTensor | Tensor | list[Tensor]) -> Encoded:
        """DETR's encoder; with two-stage, also the dense head's per-cell proposals on its memory."""
        encoded = super().encode(samples)
        if self.two_stage:
            encoded.proposals = self.enc_head(encoded.memory_map, encoded.mask)
        return encoded

    def queries(self, encoded: Encoded) -> DecoderQueries:
        """Anchors as logits [Q, B, 4] and content [Q, B, C]: the learned anchors with zero content, or
        (two-stage) the top-Q proposals with learned content (DINO's "mixed query selection": gathered
        encoder features as content are ambiguous, a box-sized cell holding parts of several objects)."""
        batch, dtype = encoded.src.shape[0], encoded.src.dtype
        if encoded.proposals is not None:
            selected = select_proposals(encoded.proposals, self.num_queries)
            anchors = torch.logit(selected, LOGIT_EPS).transpose(0, 1)  # [Q, B, 4]
            content = self.tgt_embed.weight.unsqueeze(1).repeat(1, batch, 1).to(dtype)
        else:
            anchors = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
            content = torch.zeros(anchors.shape[0], batch, self.transformer.d_model, device=anchors.device, dtype=dtype)
        return DecoderQueries(position=anchors, content=content)

    def decode(self, encoded: Encoded, queries: DecoderQueries | None = None) -> Decoded:
        """Every layer's positional query is an MLP of its input box's sine encoding (scaled by the content
        from the second layer on); its box head predicts a correction of that box, which, detached, is the
        next layer's input box."""
        queries = queries if queries is not None else self.queries(encoded)
        decoder, hidden = self.transformer.decoder, self.transformer.d_model
        key_padding_mask = encoded.key_padding_mask
        output = queries.content
        reference = queries.position.sigmoid()
        states, classes, coords = [], [], []
        for i, layer in enumerate(decoder.layers):
            query_pos = self.ref_point_head(box_sine_encoding(reference, hidden // 2).to(output.dtype))
            if i > 0:
                query_pos = query_pos * self.query_scale(output)
            output = layer(output, encoded.memory, tgt_mask=queries.attn_mask, memory_key_padding_mask=key_padding_mask,
                           pos=encoded.pos, query_pos=query_pos)
            hs = decoder.norm(output)
            boxes = (self.bbox_embed(hs) + torch.logit(reference, LOGIT_EPS)).sigmoid()
            states.append(hs)
            classes.append(self.class_embed(hs))
            coords.append(boxes)
            reference = boxes.detach()
        return Decoded(*(torch.stack(per_layer).transpose(1, 2) for per_layer in (states, classes, coords)))
