"""Checkpoint files, read and written in one place.

Reading is safe (``weights_only``): official DETR ``.pth`` files, our own, bare state dicts, safetensors,
URLs. Writing is the official training layout (``model``, ``optimizer``, ``lr_scheduler``, ``epoch``,
``args``, plus torchdetr's entries), atomically and durably (:mod:`torchdetr.atomic_write`), never with non-finite
values.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic_write import write_atomic
from ..config import DETRConfig
from ..errors import InputFileError
from ..models.weight_files import SAFE_GLOBALS, download_weights, is_url, read_weights_file

log = logging.getLogger(__name__)


def load_checkpoint(path_or_url: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint into a dict holding at least ``"model"`` (a state dict).

    Accepts the official layout (``{"model", "optimizer", "lr_scheduler", "epoch", "args"}`` or only
    ``{"model"}``), a bare state dict, a ``.safetensors`` file, a local path or an https URL
    (downloaded once into torch's hub cache by ``models.weight_files.download_weights``; a hash suffix
    in the file name is verified). Files are read with ``weights_only=True``: only tensors, containers
    and ``argparse.Namespace`` are accepted, so a malicious file cannot run code.

    Raises ``MissingFileError`` / ``InputFileError`` (naming the file) for a missing or unreadable
    file and ``DownloadError`` for a URL that cannot be fetched.
    """
    source = str(path_or_url)
    path = download_weights(source) if is_url(source) else Path(source)
    return normalize_checkpoint(read_weights_file(path, map_location, what="checkpoint"), source)


def normalize_checkpoint(checkpoint: Any, source: str = "checkpoint") -> dict[str, Any]:
    """Wrap a bare state dict as ``{"model": ...}``; strip a DDP ``module.`` prefix."""
    if not isinstance(checkpoint, Mapping):
        raise InputFileError(f"{source}: expected a dict (state dict or {{'model': ...}}), got {type(checkpoint).__name__}")
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        result = dict(checkpoint)
    elif "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        result = {k: v for k, v in checkpoint.items() if k != "state_dict"}
        result["model"] = checkpoint["state_dict"]
    elif checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
        result = {"model": dict(checkpoint)}
    else:
        raise InputFileError(
            f"{source}: no model weights found (expected a 'model' entry or a state dict; "
            f"keys: {', '.join(list(map(str, checkpoint))[:6])})"
        )
    state = result["model"]
    if state and all(k.startswith("module.") for k in state):
        result["model"] = {k[len("module."):]: v for k, v in state.items()}
    return result


def checkpoint_args(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The training options stored in a checkpoint (``args`` Namespace or dict), or ``{}``."""
    args = checkpoint.get("args")
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return vars(args).copy()
    if isinstance(args, Mapping):
        return dict(args)
    return {}


def evaluated_weights(checkpoint: Mapping[str, Any], use_ema: bool = True) -> tuple[Mapping[str, Tensor], bool]:
    """``(state dict, is_ema)``: the weights to evaluate or deploy from a loaded checkpoint.

    A checkpoint trained with ``--ema`` holds the averaged weights under ``ema["model"]``; they are
    the ones training evaluated, so they are chosen unless ``use_ema=False``. Otherwise ``"model"``.
    """
    ema = checkpoint.get("ema")
    if use_ema and isinstance(ema, Mapping) and isinstance(ema.get("model"), Mapping):
        return ema["model"], True
    return checkpoint["model"], False


def load_model_state(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    strict: bool = True,
    reinit_class_head: bool = False,
    source: str = "checkpoint",
) -> list[str]:
    """Load weights into ``model`` with a clear message on mismatch.

    With ``reinit_class_head`` a class head of a different size (fine-tuning to another number
    of classes) is skipped and left at its fresh initialisation; the skipped keys are returned. Every
    other key must match (with ``strict``): a missing, unexpected or differently shaped key is an
    ``InputFileError`` naming ``source`` and the first keys, so weights of another architecture are
    never loaded half-way.
    """
    own = model.state_dict()
    state = dict(state_dict)
    skipped: list[str] = []
    if reinit_class_head:
        for key in list(state):
            if key.endswith(("class_embed.weight", "class_embed.bias")) and key in own and own[key].shape != state[key].shape:
                skipped.append(key)
                del state[key]
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    if shape_errors:
        hint = ""
        if any("class_embed" in e for e in shape_errors):
            hint = (" The class head differs: set --num_classes to the checkpoint's class count, or fine-tune "
                    "with --pretrained, which re-initialises the class head.")
        raise InputFileError(f"{source}: weights do not fit the model ({'; '.join(shape_errors[:4])}).{hint}")
    if strict:
        missing = [k for k in own if k not in state and k not in skipped]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise InputFileError(
                f"{source}: weights do not fit the model: "
                f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}. "
                "Check --backbone, --masks, --dilation, --position_embedding, --pre_norm and the layer counts"
                + (" (only the class head may differ)." if reinit_class_head else ".")
            )
    model.load_state_dict(state, strict=strict and not skipped)
    if skipped:
        log.info("class head re-initialised (checkpoint has %d classes, model %d): %s",
                 state_dict[skipped[0]].shape[0] - 1, own[skipped[0]].shape[0] - 1, ", ".join(skipped))
    return skipped


# ---------------------------------------------------------------- writing
CHECKPOINT_NAME = "checkpoint.pth"
EXTRA_CHECKPOINT_EVERY = 100  # epochs, as the original (plus one at the LR drop)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (keys never start with ``module.``)."""
    return model.module if hasattr(model, "module") else model


def checkpoint_dict(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Any | None,
    epoch: int,
    cfg: DETRConfig,
    **extra: Any,
) -> dict[str, Any]:
    """``{"model", "optimizer", "lr_scheduler", "epoch", "args", ...extra}`` as ``main.py`` writes it.

    ``args`` is an ``argparse.Namespace`` (the original's type, so its code can read our files);
    extra entries (``categories``, ``ema``, ``rng``, ``run_log``…) are ignored by the original's loaders.
    """
    state: dict[str, Any] = {"model": unwrap(model).state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if lr_scheduler is not None:
        state["lr_scheduler"] = lr_scheduler.state_dict()
    state["epoch"] = epoch
    state["args"] = argparse.Namespace(**cfg.to_dict())
    state.update(extra)
    return state


def non_finite_entries(state: Any, prefix: str = "") -> list[str]:
    """Names (``model/transformer.x.weight``, ``optimizer/state/3/exp_avg``…) of floating-point tensors in
    ``state`` (nested dicts, lists) holding NaN or infinity; ``[]`` when every value is finite."""
    if torch.is_tensor(state):
        return [prefix or "tensor"] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, Mapping):
        return [name for key, value in state.items() for name in non_finite_entries(value, f"{prefix}{key}/")]
    if isinstance(state, list | tuple):
        return [name for i, value in enumerate(state) for name in non_finite_entries(value, f"{prefix}{i}/")]
    return []


def resume_problem(checkpoint: Mapping[str, Any]) -> str | None:
    """Why a loaded checkpoint cannot continue a run (no training state, non-finite values), or None."""
    missing = [key for key in ("optimizer", "lr_scheduler", "epoch") if key not in checkpoint]
    if missing:
        return f"it holds no training state (no {', '.join(missing)})"
    bad = non_finite_entries({k: checkpoint[k] for k in ("model", "ema", "optimizer") if k in checkpoint})
    if bad:
        return f"it holds non-finite values ({', '.join(name.rstrip('/') for name in bad[:3])}{', …' if len(bad) > 3 else ''})"
    return None


def save_atomic(state: dict[str, Any], path: str | Path, copies: Sequence[str | Path] = ()) -> Path:
    """``torch.save(state)`` to ``path`` (and ``copies``) through :func:`write_atomic`: atomic and durable."""
    return write_atomic(path, lambda f: torch.save(state, f), copies=copies, what="checkpoint")


def checkpoint_paths(output_dir: Path, epoch: int, lr_drop: int) -> list[Path]:
    """``checkpoint.pth`` always, plus ``checkpointNNNN.pth`` before the LR drop and every 100 epochs."""
    paths = [output_dir / CHECKPOINT_NAME]
    if (epoch + 1) % lr_drop == 0 or (epoch + 1) % EXTRA_CHECKPOINT_EVERY == 0:
        paths.append(output_dir / f"checkpoint{epoch:04}.pth")
    return paths


def write_checkpoints(state: dict[str, Any], output_dir: Path, epoch: int, lr_drop: int) -> list[Path]:
    """Save ``state`` (see :func:`checkpoint_dict`) to every path :func:`checkpoint_paths` names for ``epoch``.

    Refuses (``ValueError``) a state with non-finite values: the files on disk stay the last good ones.
    The state is serialised once; ``checkpoint.pth`` is replaced last.
    """
    bad = non_finite_entries({k: state[k] for k in ("model", "ema", "optimizer") if k in state})
    if bad:
        raise ValueError(f"non-finite values in {', '.join(name.rstrip('/') for name in bad[:3])}")
    paths = checkpoint_paths(output_dir, epoch, lr_drop)
    save_atomic(state, paths[0], copies=paths[1:])
    return paths


def checkpoint_epoch(path: str | Path) -> int | None:
    """The ``epoch`` stored in a checkpoint file, read without loading its tensors (memory-mapped); None if unreadable."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(checkpoint["epoch"])
    except Exception:  # any unreadable file simply has no known epoch
        return None
