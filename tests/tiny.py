"""The one tiny model every test builds from (resnet18, 32 wide, 1+2 layers, 5 queries, random weights).

Small enough that a forward pass takes milliseconds on a CPU, so the whole suite stays fast; a test
overrides only what it is about (``tiny_config(num_queries=10)``, ``TINY_MODEL | {...}``).
"""

from __future__ import annotations

from typing import Any

from torchdetr.config import DETRConfig

TINY_MODEL: dict[str, Any] = dict(
    backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=5,
    backbone_weights="none",
)

# the smallest mask model: --masks needs hidden_dim divisible by 128 and hidden_dim + nheads by 8 (config.py)
TINY_MASK_MODEL: dict[str, Any] = TINY_MODEL | dict(hidden_dim=128, nheads=8, masks=True)


def tiny_config(**overrides: Any) -> DETRConfig:
    """``DETRConfig`` of the tiny model with ``overrides`` applied."""
    return DETRConfig(**(TINY_MODEL | overrides))
