"""``detr info``: summary of a model configuration or checkpoint (parameters, shapes, classes)."""

from __future__ import annotations

import argparse

import torch

from ..config import DETRConfig, add_config_arguments, config_from_args


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a model summary (parameters, output shapes)")
    p.add_argument("--config", help="YAML/JSON file of options")
    p.add_argument("--image", type=int, nargs=2, default=(800, 1066), metavar=("H", "W"),
                   help="run one forward pass on a random image of this size and print output shapes")
    add_config_arguments(p, groups=("model", "loss"), include=("backbone_weights", "lr_backbone", "frozen_weights"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..losses.build import build_model

    cfg: DETRConfig = config_from_args(args)
    model, criterion, postprocessors = build_model(cfg)
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"backbone {cfg.backbone}{' (DC5)' if cfg.dilation else ''}, hidden {cfg.hidden_dim}, "
          f"{cfg.enc_layers}+{cfg.dec_layers} layers, {cfg.num_queries} queries, {cfg.num_classes} classes"
          f"{', masks' if cfg.masks else ''}")
    print(f"parameters: {n_all:,} ({n_train:,} trainable)")
    model.eval()
    h, w = args.image
    with torch.no_grad():
        out = model(torch.zeros(1, 3, h, w))
    for k, v in out.items():
        if isinstance(v, torch.Tensor):
            print(f"  {k}: {list(v.shape)}")
        else:
            print(f"  {k}: {len(v)} auxiliary layers")
    print(f"losses weighted: {', '.join(k for k in criterion.weight_dict if not k[-1].isdigit())}")
    print(f"post-processors: {', '.join(postprocessors)}")
    return 0
