"""What a training forward pass with training-only queries produces, and where each query sits.

The technique losses consume these; ``training.queries`` produces them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models.heads import DenseOutputs


@dataclass
class QueryLayout:
    """Where each kind of query sits in the decoder's query axis."""

    num_dn: int  # dn_groups * pad_size
    pad_size: int  # P: objects per denoising group (padded to the batch's largest)
    dn_groups: int
    num_queries: int  # Q: the model's own queries (one group)
    num_groups: int

    @property
    def total(self) -> int:
        return self.num_dn + self.num_queries * self.num_groups

    def group_slice(self, g: int) -> slice:
        start = self.num_dn + g * self.num_queries
        return slice(start, start + self.num_queries)



@dataclass
class TrainingOutputs:
    """What a training forward pass with extra queries produces."""

    outputs: dict  # the model's own queries: pred_logits, pred_boxes, aux_outputs
    layout: QueryLayout
    group_outputs: list[dict] = field(default_factory=list)  # one dict per extra query group
    dn_outputs: dict | None = None  # denoising predictions (+ aux_outputs, dn_valid)
    dense: DenseOutputs | None = None  # dense head predictions on the encoder memory
