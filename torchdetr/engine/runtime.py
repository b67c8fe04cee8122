"""Where a run executes: the device (one rule for every command), seeding, mixed precision."""

from __future__ import annotations

import torch

from ..errors import ConfigError


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
