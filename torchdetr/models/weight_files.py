"""Weight files: downloaded once into torch's hub cache, read safely, with one error per way they fail.

Every download of weights goes through ``download_weights``: official DETR checkpoints
(``models.zoo``, ``hub``, ``detr predict --model detr_resnet50``), checkpoint URLs and the
ImageNet backbones (``models.backbone``). The file lands in ``<torch hub dir>/checkpoints/`` (the
cache of ``torch.hub`` and torchvision), its SHA-256 prefix is checked when the file name carries
one (``name-<hash>.pth``), and later calls read the cached file without the network. A file that
cannot be fetched (no network, an HTTP error, a hash mismatch) is a ``DownloadError`` naming what
was downloaded, the URL and how to work offline.

``read_weights_file`` reads a local ``.pth``/``.safetensors`` file with ``weights_only=True``: only
tensors, containers and ``argparse.Namespace`` (the ``args`` of training checkpoints) are accepted,
so a malicious file cannot run code. A damaged or foreign file is an ``InputFileError`` naming it.
"""

from __future__ import annotations

import argparse
import http.client
import pickle
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import torch

from ..errors import DownloadError, InputFileError, MissingFileError

# Objects that official/our training checkpoints pickle besides tensors (``args``).
SAFE_GLOBALS: list[Any] = [argparse.Namespace]
# What urllib / http.client raise when the network or the server fails (HTTPError is a URLError).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (URLError, ConnectionError, TimeoutError, http.client.HTTPException)
HASH_MISMATCH = "invalid hash value"  # torch.hub.download_url_to_file's message when the SHA-256 prefix differs


def is_url(source: str | Path) -> bool:
    """True for ``http://`` and ``https://`` addresses."""
    return str(source).startswith(("http://", "https://"))


def cached_weights_path(url: str) -> Path:
    """Where ``download_weights`` keeps the file of ``url``: ``<torch hub dir>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


TORCH_ZIP_ADVICE = ". This is an internal miniz error"  # torch's long advice after a damaged zip file's reason


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0].split(TORCH_ZIP_ADVICE)[0] if lines else type(err).__name__


def download_weights(url: str, *, what: str | None = None, offline_hint: str = "pass the file's path instead") -> Path:
    """The local copy of ``url``, downloaded into torch's hub cache on first use (hash-checked).

    ``what`` names the weights in the error message (default: the file name); ``offline_hint``
    says what to pass instead of the URL when there is no network (e.g. ``--model PATH``).
    Raises ``DownloadError`` (one line) when the file cannot be fetched or fails its hash check.
    """
    target = cached_weights_path(url)
    if target.is_file():
        return target
    match = torch.hub.HASH_REGEX.search(target.name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), match.group(1) if match else None, progress=True)
    except NETWORK_ERRORS as err:
        reason = str(err.reason) if isinstance(err, URLError) and not isinstance(err, HTTPError) else _first_line(err)
        raise DownloadError(_download_message(what or target.name, url, reason, target, offline_hint)) from None
    except RuntimeError as err:
        if HASH_MISMATCH not in str(err):
            raise
        reason = f"the downloaded file does not match its hash: {_first_line(err)}"
        raise DownloadError(_download_message(what or target.name, url, reason, target, offline_hint)) from None
    return target


def _download_message(what: str, url: str, reason: str, cache: Path, offline_hint: str) -> str:
    return (f"{what}: could not download {url} ({reason}). Offline? Download the file where there is network access "
            f"and {offline_hint}, or copy it to {cache}")


def _damage(path: Path, err: BaseException) -> str:
    """Why a file could not be read, in a few words: empty, or the reader's first line."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
    except OSError:
        pass
    text = _first_line(err)
    return f"damaged or truncated? {type(err).__name__}" + (f": {text}" if text != type(err).__name__ else "")


def read_weights_file(path: str | Path, map_location: str | torch.device = "cpu", what: str = "weights file") -> Any:
    """The object stored in a local ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors`` file.

    Raises ``MissingFileError`` when there is no such file and ``InputFileError`` (naming the file)
    when it cannot be read as weights.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as err:  # SafetensorError, OSError, or whatever a damaged header makes the parser raise
            raise InputFileError(f"{path}: not a readable safetensors file ({_damage(path, err)})") from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()
        raise InputFileError(
            f"{path}: refused to load: not a weights-only PyTorch file (damaged, not a checkpoint, or holding objects "
            f"other than tensors and plain containers: {detail[0] if detail else 'unpickling failed'}). Only load "
            "files you trust; if you do, convert it with torch.load(..., weights_only=False) and save its state dict."
        ) from None
    except Exception as err:  # a damaged file makes torch's (weights-only) unpickler raise anything: KeyError, EOFError…
        raise InputFileError(f"{path}: not a readable PyTorch {what}: expected a file written by torch.save "
                             f"({_damage(path, err)})") from None
