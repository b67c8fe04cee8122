"""The DataLoaders of a run: shuffled training batches, sequential validation batches, seeded workers.

Under ``torchrun`` each process trains on its own shard (``DistributedSampler``); otherwise the training
order comes from a generator seeded with ``cfg.seed``, so a run is reproducible. Validation batches are
those of a single process, dealt out whole to the processes (:class:`ShardedBatches`): every image is
evaluated once, in a batch of the same images (hence the same padding) as in a single process, so a
distributed evaluation computes exactly the single-process numbers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

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
        batch_sampler = SkippingBatchSampler(sampler_train, cfg.batch_size, drop_last=drop_last)
        loader_train = RunLoader(dataset_train, batch_sampler=batch_sampler, generator=generator, **common)
    batches_val = ShardedBatches(len(dataset_val), cfg.batch_size, du.get_rank(), du.get_world_size())
    loader_val = RunLoader(dataset_val, batch_sampler=batches_val, **common)
    return loader_train, loader_val


class ShardedBatches(Sampler[list[int]]):
    """The sequential batches ``[0..B-1], [B..2B-1], …`` of ``size`` images (the last one shorter), batch
    ``k`` going to process ``k % world_size``: no image twice, none left out, no padding duplicates.

    Processes may get one batch fewer than others, so evaluation must not run a collective per batch.
    """

    def __init__(self, size: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size

    def _starts(self) -> range:
        return range(self.rank * self.batch_size, self.size, self.world_size * self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for start in self._starts():
            yield list(range(start, min(start + self.batch_size, self.size)))

    def __len__(self) -> int:
        return len(self._starts())


class SkippingBatchSampler(BatchSampler):
    """``BatchSampler`` whose next pass can leave out its first ``skip`` batches (their indices drawn, no image
    loaded): an epoch continued from a checkpoint written in its middle takes the batches it had left."""

    skip: int = 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


def skip_batches(loader: DataLoader, count: int) -> None:
    """Make the next pass over the training ``loader`` start at its batch ``count``."""
    loader.batch_sampler.skip = count


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a distributed training loader for ``epoch`` (each process draws a new shard); no-op otherwise."""
    sampler = getattr(loader.batch_sampler, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
