"""The module that training optimises: the model plus its training-only queries (one DDP unit)."""

from __future__ import annotations

from torch import Tensor, nn

from ..config import DETRConfig
from ..errors import ConfigError
from ..losses.set_criterion import SetCriterion
from ..losses.techniques import TrainingCriterion
from .queries import TrainingQueries


class TrainingModel(nn.Module):
    """``forward(samples, targets)`` → ``TrainingOutputs``.

    ``detr`` is the plain DETR (what is saved for inference); ``queries`` the extra training queries.
    """

    def __init__(self, detr: nn.Module, queries: TrainingQueries) -> None:
        super().__init__()
        self.detr = detr
        self.queries = queries

    def forward(self, samples, targets: list[dict[str, Tensor]]):
        return self.queries(self.detr, samples, targets)


def build_training_model(
    model: nn.Module, criterion: SetCriterion, cfg: DETRConfig
) -> tuple[TrainingModel, TrainingCriterion] | None:
    """``(TrainingModel, TrainingCriterion)`` with query groups, denoising queries or the dense head, else None."""
    if cfg.num_groups <= 1 and cfg.dn_groups <= 0 and not cfg.dense_head and not cfg.two_stage:
        return None
    if cfg.masks:
        raise ConfigError("--num_groups / --dn_groups / --dense_head are for detection training; not with --masks")
    queries = TrainingQueries(model, num_groups=cfg.num_groups, dn_groups=cfg.dn_groups,
                              dn_box_noise=cfg.dn_box_noise, dn_label_noise=cfg.dn_label_noise,
                              dense_head=cfg.dense_head and not cfg.two_stage)
    return TrainingModel(model, queries), TrainingCriterion(criterion)
