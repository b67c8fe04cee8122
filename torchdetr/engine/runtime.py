"""Where and how a run executes: the device (one rule for every command), the process group, seeds,
mixed precision, moving a batch to the device and the progress bar."""

from __future__ import annotations

import dataclasses
import logging
import random
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import ConfigError
from ..structures import NestedTensor
from . import distributed as du

log = logging.getLogger("torchdetr.train")

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


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The state of every random generator a training step draws from, in a form checkpoints hold.

    ``torch`` (CPU), ``cuda`` (every GPU, when CUDA is initialised), ``numpy`` and ``python`` (the
    global generators data augmentation uses) and ``loader``: ``generator``, the training loader's
    generator (shuffling order and worker seeds). Only tensors, numbers and tuples, so a checkpoint
    holding it still loads with ``weights_only=True``.
    """
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
        "loader": generator.get_state() if generator is not None else None,
    }


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured; CUDA states only onto as many GPUs as were saved."""
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("the saved CUDA random states are of %d GPU(s), this machine has %d: not restored",
                        len(cuda), torch.cuda.device_count())
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    random.setstate(_as_python_state(state["python"]))
    if generator is not None and state.get("loader") is not None:
        generator.set_state(state["loader"])


def _as_python_state(state: Any) -> tuple:
    """``random.setstate`` wants tuples (a round trip through some formats gives lists)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without changing any global random generator (evaluation between training epochs):
    a run evaluated between its epochs draws the same training randomness as one that is not."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def start_process(device: str | torch.device | None, seed: int, dist_url: str = "env://",
                  dist_timeout: float = du.DEFAULT_TIMEOUT_MINUTES) -> tuple[torch.device, du.DistInfo]:
    """Set up this process: its device, the process group under ``torchrun`` (collectives time out after
    ``dist_timeout`` minutes), seeds (``seed + rank``).

    Returns ``(device, DistInfo)``; under ``torchrun`` on CUDA the device is this process's local GPU.
    """
    resolved = resolve_device(device)
    info = du.init_distributed(str(resolved), dist_url, dist_timeout)
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


def progress(iterable: Iterable, desc: str, total: int | None = None, initial: int = 0) -> tqdm:
    """A progress bar on an interactive terminal of the main process; disabled (``.disable``) anywhere else."""
    return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty() or not du.is_main_process(),
                dynamic_ncols=True, leave=False, initial=initial)
