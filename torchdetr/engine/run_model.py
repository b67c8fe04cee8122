"""The modules a training run works with: the DETR model and its loss, the training-only queries that
wrap them, the DistributedDataParallel wrapper under ``torchrun``, and the EMA of the weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import DETRConfig
from ..losses.build import build_model
from ..losses.set_criterion import SetCriterion
from ..training import ModelEMA, build_training_model
from ..training.fast_step import FastSetCriterion, enable_fast_training
from .start import load_start_weights

log = logging.getLogger("torchdetr.train")


@dataclass
class RunModel:
    """What a training run builds from its config."""

    model: nn.Module  # the DETR model, never wrapped: what checkpoints save and inference runs
    criterion: SetCriterion
    postprocessors: dict[str, nn.Module]
    train_module: nn.Module  # what the optimizer trains: ``model`` or model + training-only queries; DDP under torchrun
    # (evaluation runs ``model`` itself on every process: no DDP collectives, so shards may differ in length)
    train_criterion: nn.Module  # the loss of ``train_module``'s outputs
    training_queries: nn.Module | None  # the training-only queries (saved in checkpoints to resume), or None
    ema: ModelEMA | None
    n_parameters: int  # trainable parameters of ``model``

    @property
    def eval_module(self) -> nn.Module:
        """What evaluation runs: the EMA weights when kept, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint_extras(self) -> dict[str, Any]:
        """Checkpoint entries besides the model's weights: ``training_queries`` and ``ema`` when used."""
        extras: dict[str, Any] = {}
        if self.training_queries is not None:
            extras["training_queries"] = self.training_queries.state_dict()
        if self.ema is not None:
            extras["ema"] = self.ema.state_dict_for_checkpoint()
        return extras


def build_run_model(cfg: DETRConfig, device: torch.device, distributed: bool) -> RunModel:
    """The model with its start weights, on ``device``, wrapped for training as ``cfg`` asks."""
    model, criterion, postprocessors = build_model(cfg)
    start = load_start_weights(model, cfg)
    model.to(device)
    criterion.to(device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model: %s backbone (%s norm), %d+%d layers, hidden %d, %d queries, %d classes; %s parameters to train; "
             "start: %s", cfg.backbone, cfg.resolved_backbone_norm, cfg.enc_layers, cfg.dec_layers, cfg.hidden_dim,
             cfg.num_queries, cfg.num_classes, f"{n_parameters:,}", start)
    if cfg.channels_last_training:
        model.to(memory_format=torch.channels_last)
    if cfg.fast_train:
        enable_fast_training(model, channels_last=True)
        criterion = FastSetCriterion.from_criterion(criterion)
        log.info("--fast_train: folded frozen norms, channels-last convolutions, attention without weights, all decoder "
                 "layers matched at once")
    training = build_training_model(model, criterion, cfg)
    train_module, train_criterion = training if training is not None else (model, criterion)
    train_module.to(device)
    if training is not None:
        log.info("training-only queries: %d query group(s), %d denoising group(s) (inference uses the plain model)",
                 cfg.num_groups, cfg.dn_groups)
    if distributed:
        train_module = wrap_ddp(train_module, device)
    return RunModel(
        model=model, criterion=criterion, postprocessors=postprocessors, train_module=train_module,
        train_criterion=train_criterion, training_queries=training[0].queries if training is not None else None,
        ema=ModelEMA(model, decay=cfg.ema_decay) if cfg.ema else None, n_parameters=n_parameters,
    )


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """``module`` in DistributedDataParallel with a static graph.

    Every step of a run uses the same parameters (each loss keeps its branch in the graph even when a batch
    has no object, e.g. ``losses/dense.py``), but a configuration may leave some parameters out of every
    step: with ``--two_stage`` the learned anchors ``query_embed`` are replaced by the dense head's
    proposals (kept in the model so its checkpoints keep their keys). ``static_graph=True`` lets DDP learn
    that set in the first step, instead of ``find_unused_parameters=True``, which walks the autograd graph
    after every forward pass. Parameters left out keep ``grad=None``, exactly as in a single process.
    """
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
