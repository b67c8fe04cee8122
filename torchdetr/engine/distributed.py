"""Distributed data parallel set-up for ``torchrun`` (single- or multi-node) and small helpers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
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


DEFAULT_TIMEOUT_MINUTES = 30.0


class PeerLost(RuntimeError):
    """A collective operation failed: another process of the run died, or did not answer within the timeout."""


def init_distributed(device: str, dist_url: str = "env://", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK set).

    NCCL on CUDA, Gloo on CPU. Without those variables this is a single process and a no-op; a process
    that already joined keeps its group. ``timeout_minutes`` bounds every collective operation: a process
    waiting longer for the others (one died, or hangs) fails instead of waiting forever.
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
    dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=rank,
                            timeout=timedelta(minutes=timeout_minutes))
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


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failed collective operation (a peer closed its connection, a timeout, an NCCL
    error) rather than a bug of this process."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(marker in text for marker in COLLECTIVE_FAILURE_MARKERS)


# what Gloo and NCCL say when the other end of a collective is gone or silent
COLLECTIVE_FAILURE_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting",
                              "timed out", "NCCL", "gloo", "Broken pipe")


def peer_lost(err: BaseException) -> PeerLost:
    """The one-line error of a run whose collective ``err`` failed."""
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return PeerLost(f"rank {get_rank()}/{get_world_size()}: another process of the distributed run stopped or did "
                    f"not answer within the timeout (--dist_timeout) ({first_line[:200]}); this process stops too. "
                    "Run the same command with --resume auto to continue from the last checkpoint")


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
