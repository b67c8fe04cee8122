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
head one-to-many (``training/dense.py``), which learns far faster than the set loss, so the decoder starts
from good proposals.

It is a separate model (``--variant dab``): its checkpoints have ``query_embed.weight`` [Q, 4]
(anchors in inverse-sigmoid space) plus ``ref_point_head.*`` and ``query_scale.*`` (and ``enc_head.*``,
``tgt_embed.*`` with two-stage). The default ``--variant detr`` is unchanged. Denoising queries feed
their noised boxes as anchors (DN-DAB-DETR).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..structures import NestedTensor, as_nested_tensor
from .backbone import Joiner
from .detr import DETR, MLP, Outputs, make_outputs
from .heads import LOGIT_EPS, DenseHead
from .position_encoding import box_sine_encoding
from .transformer import Transformer

INITIAL_ANCHOR_SIZE = 0.2  # w and h of the initial anchors, as a fraction of the image


__all__ = ["AnchorDETR", "init_anchors"]


def init_anchors(embedding: nn.Embedding, generator: torch.Generator | None = None) -> None:
    """Anchor centres uniform over the image, sizes ``INITIAL_ANCHOR_SIZE`` (stored as logits)."""
    with torch.no_grad():
        n = embedding.weight.shape[0]
        centres = torch.rand(n, 2, generator=generator)
        sizes = torch.full((n, 2), INITIAL_ANCHOR_SIZE)
        embedding.weight.copy_(torch.logit(torch.cat([centres, sizes], dim=1), LOGIT_EPS))


class AnchorDETR(DETR):
    """DETR with anchor-box queries and iterative box refinement; same inputs and outputs as ``DETR``."""

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

    def new_query_embedding(self, num: int) -> nn.Embedding:
        embedding = nn.Embedding(num, 4)
        init_anchors(embedding)
        return embedding

    def box_to_query(self, boxes: Tensor, box_pos: nn.Module | None) -> Tensor:
        """Denoising queries: the noised boxes are the anchors (no extra MLP)."""
        return torch.logit(boxes, LOGIT_EPS)

    def forward(self, samples: NestedTensor | Tensor | Sequence[Tensor]) -> Outputs:
        outputs_class, outputs_coord, _ = self.forward_queries(samples)
        return make_outputs(outputs_class, outputs_coord, self.aux_loss)

    def forward_queries(
        self,
        samples: NestedTensor | Tensor | Sequence[Tensor],
        prefix_tgt: Tensor | None = None,
        prefix_query: Tensor | None = None,
        suffix_query: Tensor | None = None,
        tgt_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """As ``DETR.forward_queries``; queries are anchor logits [*, 4]. With two-stage, the model's own
        anchors are the selected proposals, and ``extras["dense"]`` holds the dense head's outputs.
        Extra query groups (``suffix_query``) are not supported with two-stage."""
        samples = as_nested_tensor(samples)
        features, pos = self.backbone(samples)
        src, spatial_mask = features[-1].decompose()
        batch, hidden = src.shape[0], self.transformer.d_model
        src = self.input_proj(src)
        height, width = src.shape[-2:]
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos[-1].flatten(2).permute(2, 0, 1)
        mask = spatial_mask.flatten(1)
        memory = self.transformer.encoder(src, src_key_padding_mask=mask, pos=pos_embed)
        memory_map = memory.permute(1, 2, 0).reshape(batch, hidden, height, width)
        extras: dict[str, Any] = {"memory": memory_map, "mask": spatial_mask}

        if self.two_stage:
            if suffix_query is not None:
                raise ValueError("--num_groups is not supported with --two_stage (the dense head already "
                                 "gives one-to-many supervision)")
            dense = self.enc_head(memory_map, spatial_mask)
            extras["dense"] = dense
            scores = dense.logits.max(-1).values.masked_fill(~dense.valid, float("-inf"))
            top = scores.topk(min(self.num_queries, height * width), dim=1).indices  # [B, Q] (fewer: tiny maps)
            if top.shape[1] < self.num_queries:
                # fewer cells than queries (very small images): reuse the best cells in turn; the learned
                # content queries differ, so the duplicates do not collapse into one prediction
                top = top[:, torch.arange(self.num_queries, device=top.device) % top.shape[1]]
            selected = torch.gather(dense.boxes, 1, top[..., None].expand(-1, -1, 4)).detach()
            anchors = torch.logit(selected, LOGIT_EPS).transpose(0, 1)  # [Q, B, 4]
            # positions from the selected proposals, content learned (DINO's "mixed query selection": the
            # gathered encoder features as content are ambiguous, a box-sized cell holding parts of several objects)
            output = self.tgt_embed.weight.unsqueeze(1).repeat(1, batch, 1).to(src.dtype)
        else:
            anchors = self.query_embed.weight
            if suffix_query is not None:
                anchors = torch.cat([anchors, suffix_query], dim=0)
            anchors = anchors.unsqueeze(1).repeat(1, batch, 1)
            output = torch.zeros(anchors.shape[0], batch, hidden, device=src.device, dtype=src.dtype)
        if prefix_query is not None:
            anchors = torch.cat([prefix_query, anchors], dim=0)
            output = torch.cat([prefix_tgt.to(output.dtype), output], dim=0)

        decoder = self.transformer.decoder
        reference = anchors.sigmoid()
        classes, coords = [], []
        for i, layer in enumerate(decoder.layers):
            query_pos = self.ref_point_head(box_sine_encoding(reference, hidden // 2).to(output.dtype))
            if i > 0:
                query_pos = query_pos * self.query_scale(output)
            output = layer(output, memory, tgt_mask=tgt_mask, memory_key_padding_mask=mask, pos=pos_embed,
                           query_pos=query_pos)
            hs = decoder.norm(output)
            boxes = (self.bbox_embed(hs) + torch.logit(reference, LOGIT_EPS)).sigmoid()
            classes.append(self.class_embed(hs))
            coords.append(boxes)
            reference = boxes.detach()
        return torch.stack(classes).transpose(1, 2), torch.stack(coords).transpose(1, 2), extras
