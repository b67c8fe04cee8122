"""Random state of a run (``engine/runtime.py``): captured in a form checkpoints hold, restored exactly, and
evaluation kept from drawing on the training's generators."""

from __future__ import annotations

import random

import numpy as np
import torch

from torchdetr.engine.checkpoint import load_checkpoint, save_atomic
from torchdetr.engine.runtime import isolated_rng, rng_state, set_rng_state


def draws(generator: torch.Generator) -> tuple:
    """One draw from each generator a training step uses (python's Gaussian cache included)."""
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.normal(), random.random(), random.gauss(0, 1),
            torch.randperm(10, generator=generator).tolist())


def test_random_state_survives_a_weights_only_checkpoint_and_continues_the_same_sequence(tmp_path):
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    draws(generator)  # move every generator away from its seed, leave cached Gaussians behind
    np.random.normal(), random.gauss(0, 1)
    save_atomic({"model": {}, "rng": [rng_state(generator)]}, tmp_path / "state.pth")
    expected = draws(generator)

    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    other = torch.Generator().manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "state.pth")["rng"][0], other)  # weights_only=True
    assert draws(other) == expected


def test_isolated_rng_leaves_the_global_generators_as_they_were():
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    with isolated_rng():
        torch.rand(100), np.random.rand(100), random.random()  # what an evaluation may draw
    assert (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()) == expected
