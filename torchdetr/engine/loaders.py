"""The DataLoaders of a run: shuffled training batches, sequential validation batches, seeded workers.

Under ``torchrun`` each process reads its own shard (``DistributedSampler``); otherwise the training
order comes from a generator seeded with ``cfg.seed``, so a run is reproducible.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from ..config import DETRConfig
from ..structures import collate_fn
from . import distributed as du
from .runtime import NUMPY_SEED_MODULUS


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` of a worker from the seed torch gave it."""
    worker_seed = torch.initial_seed() % NUMPY_SEED_MODULUS
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loaders(dataset_train: Dataset | None, dataset_val: Dataset, cfg: DETRConfig) -> tuple[DataLoader | None, DataLoader]:
    """``(train loader or None, val loader)``: batches of ``cfg.batch_size`` collated to a ``NestedTensor``.

    The train loader shuffles and drops the last incomplete batch (unless the set is smaller than one
    batch); the val loader keeps every image, in order.
    """
    generator = torch.Generator()
    generator.manual_seed(cfg.seed + du.get_rank())
    common = dict(collate_fn=collate_fn, num_workers=cfg.num_workers, worker_init_fn=seed_worker,
                  persistent_workers=cfg.num_workers > 0)
    loader_train = None
    if dataset_train is not None:
        if du.is_dist():
            sampler_train = DistributedSampler(dataset_train, seed=cfg.seed)
        else:
            sampler_train = RandomSampler(dataset_train, generator=generator)
        drop_last = len(dataset_train) >= cfg.batch_size
        batch_sampler = BatchSampler(sampler_train, cfg.batch_size, drop_last=drop_last)
        loader_train = DataLoader(dataset_train, batch_sampler=batch_sampler, generator=generator, **common)
    sampler_val = DistributedSampler(dataset_val, shuffle=False) if du.is_dist() else SequentialSampler(dataset_val)
    loader_val = DataLoader(dataset_val, batch_size=cfg.batch_size, sampler=sampler_val, drop_last=False, **common)
    return loader_train, loader_val


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a distributed training loader for ``epoch`` (each process draws a new shard); no-op otherwise."""
    sampler = getattr(loader.batch_sampler, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
