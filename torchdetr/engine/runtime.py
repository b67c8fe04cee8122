"""Where and how a run executes: the device (one rule for every command), the process group, seeds,
mixed precision, moving a batch to the device and the progress bar."""

from __future__ import annotations

import dataclasses
import random
import sys
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import ConfigError
from ..structures import NestedTensor
from . import distributed as du

NUMPY_SEED_MODULUS = 2**32  # numpy seeds must fit in 32 bits
AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None → CUDA when available, else CPU; anything else as given, checked.

    Raises ``ConfigError`` naming ``--device`` for a string that is not a device or a CUDA device on a
    machine without CUDA (or with fewer GPUs than the index asks for).
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device: {device!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type not in ("cpu", "mps", "xpu"):
        raise ConfigError(f"--device: {device!r} is not supported (auto, cpu, cuda, cuda:N)")
    return resolved


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and ``random`` (the three generators data augmentation and models draw from)."""
    torch.manual_seed(seed)
    np.random.seed(seed % NUMPY_SEED_MODULUS)
    random.seed(seed)


def start_process(device: str | torch.device | None, seed: int, dist_url: str = "env://") -> tuple[torch.device, du.DistInfo]:
    """Set up this process: its device, the process group under ``torchrun``, seeds (``seed + rank``).

    Returns ``(device, DistInfo)``; under ``torchrun`` on CUDA the device is this process's local GPU.
    """
    resolved = resolve_device(device)
    info = du.init_distributed(str(resolved), dist_url)
    if info.distributed and resolved.type == "cuda":
        resolved = torch.device("cuda", info.local_rank)
    seed_everything(seed + info.rank)
    return resolved, info


def autocast_context(device: torch.device, amp: str) -> AbstractContextManager:
    """``torch.autocast`` to bfloat16 (``amp="bf16"``) or float16 (``"fp16"``); a no-op for ``"none"``."""
    if amp == "none":
        return nullcontext()
    if amp not in AMP_DTYPES:
        raise ConfigError(f"--amp: {amp!r} is not one of none, {', '.join(AMP_DTYPES)}")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def to_float(obj: Any) -> Any:
    """Floating tensors in nested dicts/lists/tuples/dataclasses → float32 (model outputs under autocast)."""
    if torch.is_tensor(obj):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_float(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_float(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: to_float(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj


def to_device(
    samples: NestedTensor, targets: list[dict[str, Any]], device: torch.device, channels_last: bool = False
) -> tuple[NestedTensor, list[dict[str, Any]]]:
    """A collated batch on ``device``: images [B, 3, H, W] (channels-last when asked) + mask, and each target's tensors."""
    samples = samples.to(device, non_blocking=True)
    if channels_last:
        samples.tensors = samples.tensors.contiguous(memory_format=torch.channels_last)
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()}
               for t in targets]
    return samples, targets


def progress(iterable: Iterable, desc: str, total: int | None = None) -> tqdm:
    """A progress bar on an interactive terminal of the main process; disabled (``.disable``) anywhere else."""
    return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty() or not du.is_main_process(),
                dynamic_ncols=True, leave=False)
