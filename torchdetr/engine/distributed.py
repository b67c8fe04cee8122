"""Distributed data parallel set-up for ``torchrun`` (single- or multi-node) and small helpers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``local_rank`` on the node."""

    distributed: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def init_distributed(device: str, dist_url: str = "env://") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK set).

    NCCL on CUDA, Gloo on CPU. Without those variables this is a single process and a no-op; a process
    that already joined keeps its group.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    if is_dist():  # already joined (a run that evaluates after its start-up)
        return DistInfo(True, dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world_size <= 1:
        return DistInfo(False, rank, world_size, local_rank)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=rank)
    dist.barrier()
    log.info("distributed: rank %d/%d (local %d), backend %s", rank, world_size, local_rank, backend)
    return DistInfo(True, rank, world_size, local_rank)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over all processes (same keys on every process)."""
    if not is_dist() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= get_world_size()
    return dict(zip(keys, tensor.tolist()))


def broadcast_object(obj: Any) -> Any:
    """The main process's ``obj`` on every process (``obj`` itself in a single process); picklable objects only."""
    if not is_dist():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` on every process (``[obj]`` in a single process)."""
    if not is_dist():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
