"""The DataLoaders of a run: shuffled training batches, sequential validation batches, seeded workers.

Under ``torchrun`` each process reads its own shard (``DistributedSampler``); otherwise the training
order comes from a generator seeded with ``cfg.seed``, so a run is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from ..config import DETRConfig
from ..errors import UserError
from ..structures import collate_fn
from . import distributed as du
from .runtime import NUMPY_SEED_MODULUS


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` of a worker from the seed torch gave it."""
    worker_seed = torch.initial_seed() % NUMPY_SEED_MODULUS
    np.random.seed(worker_seed)
    random.seed(worker_seed)


class RunLoader(DataLoader):
    """A DataLoader whose workers' user errors reach the main process as they were raised.

    PyTorch re-raises an exception of a worker process with a message that starts "Caught DataError in
    DataLoader worker process 0." and holds the worker's whole traceback; a ``UserError`` (an unreadable
    image naming its file, …) is raised again here with its own one-line message.
    """

    def __iter__(self) -> Iterator:
        return _UserErrorsOfWorkers(super().__iter__())


class _UserErrorsOfWorkers:
    def __init__(self, iterator: Iterator) -> None:
        self.iterator = iterator

    def __iter__(self) -> _UserErrorsOfWorkers:
        return self

    def __len__(self) -> int:
        return len(self.iterator)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        try:
            return next(self.iterator)
        except UserError as err:
            message = worker_error_message(err)
            if message is None:
                raise
            raise type(err)(message) from None


def worker_error_message(err: BaseException) -> str | None:
    """The original message of an exception PyTorch re-raised from a DataLoader worker, else None."""
    text = str(err)
    if not text.startswith(f"Caught {type(err).__name__} in DataLoader worker"):
        return None
    lines = text.rstrip().splitlines()
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    for index in range(len(lines) - 1, 0, -1):
        if lines[index].startswith(prefix):
            return "\n".join([lines[index][len(prefix):], *lines[index + 1:]])
    return None


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
        loader_train = RunLoader(dataset_train, batch_sampler=batch_sampler, generator=generator, **common)
    sampler_val = DistributedSampler(dataset_val, shuffle=False) if du.is_dist() else SequentialSampler(dataset_val)
    loader_val = RunLoader(dataset_val, batch_size=cfg.batch_size, sampler=sampler_val, drop_last=False, **common)
    return loader_train, loader_val


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a distributed training loader for ``epoch`` (each process draws a new shard); no-op otherwise."""
    sampler = getattr(loader.batch_sampler, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
