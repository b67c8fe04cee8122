"""Training-only decoder queries that speed up DETR's convergence: query groups and denoising.

Both add queries to the decoder during training only, next to the model's own ``Q`` queries,
and restrict the decoder's self-attention so that no extra query changes what the model's own
queries compute... except through shared weights:

- **Query groups** (Group DETR, Chen et al. 2022): ``num_groups - 1`` extra sets of ``Q`` learned
  query positions. Each group attends only to itself and is matched to the ground truth on its
  own (one-to-one), so every object gets ``num_groups`` positive queries per image.
- **Denoising** (DN-DETR, Li et al. 2022, adapted to DETR's absolute box head): every ground-truth
  box, jittered, and its label, sometimes flipped, become extra queries (content = label
  embedding, position = an MLP of the box's sine encoding) that must reconstruct the true box
  and label. ``dn_groups`` noised copies per object; a copy sees only its own copy group (and
  the model's primary queries), so no query sees the answer it is asked for through another
  copy, and no model query sees any of them.

The extra parameters live in ``TrainingQueries``, not in the model: checkpoints for inference,
exported models and the forward pass at inference are exactly DETR's. The queries go through the
model's own ``encode``/``decode``; how an extra query is written for a model variant (a learned
position embedding for DETR, an anchor box for ``AnchorDETR``) is the business of a small adapter here
(``query_adapter``), not of the model.

Query order in the decoder: ``[denoising (dn_groups × P) | primary (Q) | group 2 (Q) | …]`` where
``P`` is the largest number of objects of an image in the batch (shorter images are padded with
dummy queries that get no loss).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from ..errors import ConfigError
from ..losses.outputs import QueryLayout, TrainingOutputs
from ..models.anchor_detr import AnchorDETR, init_anchors
from ..models.detr import DETR, DecoderQueries, make_outputs
from ..models.heads import LOGIT_EPS, MLP, DenseHead
from ..models.position_encoding import BOX_SINE_FEATS, box_sine_encoding
from ..structures import NestedTensor, as_nested_tensor

MIN_NOISED_SIZE = 1e-3  # jittered boxes keep at least this width and height (normalised)
DUMMY_BOX_LOW, DUMMY_BOX_SPAN = 0.25, 0.5  # padding slots of the denoising groups: random boxes in [0.25, 0.75]


def attention_mask(layout: QueryLayout, device: torch.device | None = None) -> Tensor:
    """Decoder self-attention mask [N, N] (True = may NOT attend), N = ``layout.total``.

    - model queries of group g see only group g;
    - denoising copy d sees copy d and the primary group, never another copy.
    """
    n = layout.total
    blocked = torch.ones(n, n, dtype=torch.bool, device=device)
    for g in range(layout.num_groups):
        s = layout.group_slice(g)
        blocked[s, s] = False
    primary = layout.group_slice(0)
    for d in range(layout.dn_groups):
        s = slice(d * layout.pad_size, (d + 1) * layout.pad_size)
        blocked[s, s] = False
        blocked[s, primary] = False
    return blocked


# ------------------------------------------------------------------ per-variant query adapters
class BoxSineQuery(MLP):
    """DETR: a noised box [..., 4] → a position embedding [..., C], an MLP of the box's sine encoding."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__(4 * BOX_SINE_FEATS, hidden_dim, hidden_dim, 2)

    def forward(self, boxes: Tensor) -> Tensor:
        return super().forward(box_sine_encoding(boxes))


class AnchorQuery(nn.Module):
    """AnchorDETR: a noised box [..., 4] is itself the anchor, as logits [..., 4] (DN-DAB-DETR; no parameters)."""

    def forward(self, boxes: Tensor) -> Tensor:
        return torch.logit(boxes, LOGIT_EPS)


class QueryAdapter(Protocol):
    """How training-only queries are written for one model variant (positions ``DecoderQueries.position``)."""

    def group_embedding(self, num: int) -> nn.Embedding:
        """``num`` extra learned query positions [num, D], initialised like the model's own."""

    def box_query(self) -> nn.Module:
        """The module turning denoising boxes [..., 4] into query positions [..., D]."""


class EmbeddingQueries:
    """DETR: a query position is a learned embedding of ``hidden_dim``; boxes go through ``BoxSineQuery``."""

    def __init__(self, hidden_dim: int) -> None:
        self.hidden_dim = hidden_dim

    def group_embedding(self, num: int) -> nn.Embedding:
        return nn.Embedding(num, self.hidden_dim)

    def box_query(self) -> nn.Module:
        return BoxSineQuery(self.hidden_dim)


class AnchorQueries:
    """AnchorDETR: a query position is an anchor box (logits [4]); boxes are their own anchors."""

    def group_embedding(self, num: int) -> nn.Embedding:
        embedding = nn.Embedding(num, 4)
        init_anchors(embedding)
        return embedding

    def box_query(self) -> nn.Module:
        return AnchorQuery()


def query_adapter(model: DETR) -> QueryAdapter:
    """The adapter of ``model``'s variant."""
    return AnchorQueries() if isinstance(model, AnchorDETR) else EmbeddingQueries(model.transformer.d_model)


# ------------------------------------------------------------------ the training-only queries
class TrainingQueries(nn.Module):
    """Extra query groups, denoising queries and the dense head for training (see module docstring).

    Parameters (saved apart from the model, as ``training_queries``): ``group_query_embed``
    [(G-1)·Q, D], ``label_embed`` [K+1, C] and ``box_pos`` (DETR only) for denoising, ``dense_head``.
    """

    def __init__(
        self,
        model: DETR,
        num_groups: int = 1,
        dn_groups: int = 0,
        dn_box_noise: float = 0.4,
        dn_label_noise: float = 0.2,
        dense_head: bool = False,
    ) -> None:
        super().__init__()
        if num_groups < 1:
            raise ConfigError(f"--num_groups must be >= 1, got {num_groups}")
        if dn_groups < 0:
            raise ConfigError(f"--dn_groups must be >= 0, got {dn_groups}")
        if num_groups > 1 and getattr(model, "two_stage", False):
            raise ConfigError("--num_groups is not supported with --two_stage (the dense head already gives "
                              "one-to-many supervision)")
        hidden_dim = model.transformer.d_model
        adapter = query_adapter(model)
        self.num_groups = num_groups
        self.dn_groups = dn_groups
        self.num_queries = model.num_queries
        self.num_classes = model.num_classes
        self.dn_box_noise = dn_box_noise
        self.dn_label_noise = dn_label_noise
        self.group_query_embed = adapter.group_embedding((num_groups - 1) * self.num_queries) if num_groups > 1 else None
        self.dense_head = DenseHead(hidden_dim, self.num_classes) if dense_head else None
        self.label_embed = nn.Embedding(self.num_classes + 1, hidden_dim) if dn_groups > 0 else None
        self.box_pos = adapter.box_query() if dn_groups > 0 else None

    # ------------------------------------------------------------------ denoising inputs
    def noised_queries(self, targets: list[dict[str, Tensor]], device: torch.device) -> tuple[DecoderQueries, int, Tensor]:
        """Denoising queries (content = label embedding, position = ``box_pos`` of the noised box).

        Returns the queries (``position`` [D, B, *], ``content`` [D, B, C], D = dn_groups * P), ``P`` and
        a bool ``valid`` [B, D] that is False on padding slots.
        """
        batch = len(targets)
        pad = max((len(t["labels"]) for t in targets), default=0)
        d_total = self.dn_groups * pad
        labels = torch.full((batch, d_total), self.num_classes, dtype=torch.int64, device=device)
        boxes = torch.rand(batch, d_total, 4, device=device) * DUMMY_BOX_SPAN + DUMMY_BOX_LOW
        valid = torch.zeros(batch, d_total, dtype=torch.bool, device=device)
        for b, t in enumerate(targets):
            m = len(t["labels"])
            if m == 0:
                continue
            for d in range(self.dn_groups):
                s = slice(d * pad, d * pad + m)
                labels[b, s] = self._flip_labels(t["labels"])
                boxes[b, s] = self._jitter_boxes(t["boxes"])
                valid[b, s] = True
        content = self.label_embed(labels).transpose(0, 1)
        position = self.box_pos(boxes).transpose(0, 1)
        return DecoderQueries(position=position, content=content), pad, valid

    def _flip_labels(self, labels: Tensor) -> Tensor:
        if self.dn_label_noise <= 0:
            return labels
        flip = torch.rand(labels.shape, device=labels.device) < self.dn_label_noise
        random_labels = torch.randint(0, self.num_classes, labels.shape, device=labels.device)
        return torch.where(flip, random_labels, labels)

    def _jitter_boxes(self, boxes: Tensor) -> Tensor:
        """Shift centres by up to ±noise/2 of the size and scale sizes by 1 ± noise (DN-DETR)."""
        if self.dn_box_noise <= 0:
            return boxes
        xyxy = box_convert(boxes, "cxcywh", "xyxy")
        half = boxes[:, 2:].repeat(1, 2) / 2
        jitter = (torch.rand_like(xyxy) * 2 - 1) * half * self.dn_box_noise
        xyxy = (xyxy + jitter).clamp(0, 1)
        cxcywh = box_convert(xyxy, "xyxy", "cxcywh")
        return torch.cat([cxcywh[:, :2], cxcywh[:, 2:].clamp(min=MIN_NOISED_SIZE)], dim=1)

    def group_queries(self, batch: int, content_like: Tensor) -> DecoderQueries:
        """The extra groups' learned positions [(G-1)·Q, B, D], zero content of ``content_like``'s dtype."""
        position = self.group_query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        content = torch.zeros(position.shape[0], batch, content_like.shape[-1], device=position.device,
                              dtype=content_like.dtype)
        return DecoderQueries(position=position, content=content)

    # ------------------------------------------------------------------ forward
    def forward(
        self, model: DETR, samples: NestedTensor | Tensor | list[Tensor], targets: list[dict[str, Tensor]]
    ) -> TrainingOutputs:
        """Decode the model's queries together with the extra ones (and run the dense head).

        ``outputs`` is what ``model(samples)`` computes for its own queries (with aux outputs): exactly,
        without extra queries; up to float rounding with them (the blocked attention changes the sums).
        """
        samples = as_nested_tensor(samples)
        device = samples.tensors.device
        encoded = model.encode(samples)
        own = model.queries(encoded)
        parts, valid, pad = [own], None, 0
        if self.dn_groups > 0:
            dn, pad, valid = self.noised_queries(targets, device)
            parts.insert(0, dn)
        if self.group_query_embed is not None:
            parts.append(self.group_queries(own.content.shape[1], own.content))
        layout = QueryLayout(num_dn=self.dn_groups * pad, pad_size=pad, dn_groups=self.dn_groups,
                             num_queries=self.num_queries, num_groups=self.num_groups)
        queries = own
        if len(parts) > 1:
            queries = DecoderQueries(position=torch.cat([p.position for p in parts]),
                                     content=torch.cat([p.content.to(own.content.dtype) for p in parts]),
                                     attn_mask=attention_mask(layout, device))
        decoded = model.decode(encoded, queries)

        def part(index: slice) -> dict:
            return make_outputs(decoded.logits[:, :, index], decoded.boxes[:, :, index], model.aux_loss)

        result = TrainingOutputs(outputs=part(layout.group_slice(0)), layout=layout,
                                 group_outputs=[part(layout.group_slice(g)) for g in range(1, self.num_groups)])
        if layout.num_dn > 0:
            result.dn_outputs = part(slice(0, layout.num_dn))
            result.dn_outputs["dn_valid"] = valid
        if encoded.proposals is not None:  # two-stage models: their own dense head is supervised
            result.dense = encoded.proposals
        elif self.dense_head is not None:
            result.dense = self.dense_head(encoded.memory_map, encoded.mask)
        return result
