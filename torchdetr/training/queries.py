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
exported models and the forward pass at inference are exactly DETR's.

Query order in the decoder: ``[denoising (dn_groups × P) | primary (Q) | group 2 (Q) | …]`` where
``P`` is the largest number of objects of an image in the batch (shorter images are padded with
dummy queries that get no loss).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from ..losses.outputs import QueryLayout, TrainingOutputs
from ..models.detr import DETR, MLP, make_outputs
from ..models.heads import DenseHead
from ..models.position_encoding import BOX_SINE_FEATS
from ..structures import NestedTensor, as_nested_tensor


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


class TrainingQueries(nn.Module):
    """Extra query groups and denoising queries for training (see module docstring)."""

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
            raise ValueError(f"--num_groups must be >= 1, got {num_groups}")
        if dn_groups < 0:
            raise ValueError(f"--dn_groups must be >= 0, got {dn_groups}")
        hidden_dim = model.transformer.d_model
        self.num_groups = num_groups
        self.dn_groups = dn_groups
        self.num_queries = model.num_queries
        self.num_classes = model.num_classes
        self.dn_box_noise = dn_box_noise
        self.dn_label_noise = dn_label_noise
        self.group_query_embed = model.new_query_embedding((num_groups - 1) * self.num_queries) if num_groups > 1 else None
        self.box_pos = None
        self.dense_head = DenseHead(hidden_dim, self.num_classes) if dense_head else None
        if dn_groups > 0:
            self.label_embed = nn.Embedding(self.num_classes + 1, hidden_dim)
            if model.query_dim == hidden_dim:  # DETR: positions are embeddings; anchor models take boxes
                self.box_pos = MLP(4 * BOX_SINE_FEATS, hidden_dim, hidden_dim, 2)

    @property
    def active(self) -> bool:
        return self.num_groups > 1 or self.dn_groups > 0 or self.dense_head is not None

    # ------------------------------------------------------------------ denoising inputs
    def noised_queries(
        self, model: DETR, targets: list[dict[str, Tensor]], device: torch.device
    ) -> tuple[Tensor, Tensor, int, Tensor]:
        """Denoising content/position queries.

        Returns ``tgt`` [D, B, C], ``query`` [D, B, query_dim] (D = dn_groups * P), ``P`` and a bool
        ``valid`` [B, D] that is False on padding slots.
        """
        batch = len(targets)
        pad = max((len(t["labels"]) for t in targets), default=0)
        d_total = self.dn_groups * pad
        hidden = self.label_embed.embedding_dim
        labels = torch.full((batch, d_total), self.num_classes, dtype=torch.int64, device=device)
        boxes = torch.rand(batch, d_total, 4, device=device) * 0.5 + 0.25  # dummy boxes on padding slots
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
        if d_total == 0:
            return (torch.zeros(0, batch, hidden, device=device), torch.zeros(0, batch, model.query_dim, device=device),
                    pad, valid)
        tgt = self.label_embed(labels).transpose(0, 1)
        query = model.box_to_query(boxes, self.box_pos).transpose(0, 1)
        return tgt, query, pad, valid

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
        return torch.cat([cxcywh[:, :2], cxcywh[:, 2:].clamp(min=1e-3)], dim=1)

    # ------------------------------------------------------------------ forward
    def forward(
        self, model: DETR, samples: NestedTensor | Tensor | list[Tensor], targets: list[dict[str, Tensor]]
    ) -> TrainingOutputs:
        """Decode the model's queries together with the extra ones (and run the dense head).

        ``outputs`` is exactly what ``model(samples)`` computes for its own queries (with aux outputs).
        """
        samples = as_nested_tensor(samples)
        device = samples.tensors.device
        prefix_tgt = prefix_query = valid = None
        pad = 0
        if self.dn_groups > 0:
            prefix_tgt, prefix_query, pad, valid = self.noised_queries(model, targets, device)
        layout = QueryLayout(num_dn=self.dn_groups * pad, pad_size=pad, dn_groups=self.dn_groups,
                             num_queries=self.num_queries, num_groups=self.num_groups)
        suffix = self.group_query_embed.weight if self.group_query_embed is not None else None
        outputs_class, outputs_coord, extras = model.forward_queries(
            samples, prefix_tgt, prefix_query, suffix, tgt_mask=attention_mask(layout, device))

        def part(index: slice) -> dict:
            return make_outputs(outputs_class[:, :, index], outputs_coord[:, :, index], model.aux_loss)

        result = TrainingOutputs(outputs=part(layout.group_slice(0)), layout=layout,
                                 group_outputs=[part(layout.group_slice(g)) for g in range(1, self.num_groups)])
        if layout.num_dn > 0:
            result.dn_outputs = part(slice(0, layout.num_dn))
            result.dn_outputs["dn_valid"] = valid
        if "dense" in extras:  # two-stage models: their own dense head is supervised
            result.dense = extras["dense"]
        elif self.dense_head is not None:
            result.dense = self.dense_head(extras["memory"], extras["mask"])
        return result
