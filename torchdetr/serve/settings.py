"""The limits and switches of one server: ``ServeSettings`` (filled from ``detr serve`` flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import ConfigError

API_KEY_VARIABLE = "DETR_API_KEY"
DEFAULT_HOST = "127.0.0.1"  # loopback only: reachable from this machine, not the network
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 40_000_000  # width x height of an uploaded image, checked from its header before decoding
DEFAULT_QUEUE = 16  # requests admitted at once (waiting + running); one more is answered 503
DEFAULT_WORKERS = 1  # inference threads: one model call at a time
DEFAULT_ATTENTION_CACHE = 4  # images whose attention maps are kept (the page asks again on every click)
BYTES_PER_MB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """What a server accepts and who may call it.

    ``max_upload_mb``: request bodies larger than this are refused with 413 (before being read whole);
    ``max_pixels``: images with more pixels (from the header) are refused with 413 without decoding;
    ``queue``: requests admitted at once (``workers`` run, the others wait); beyond it → 503 with Retry-After;
    ``workers``: inference threads (model calls side by side; attention captures still run alone);
    ``api_key``: when set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer KEY`` (or ``X-API-Key``);
    ``cors_origins``: origins allowed to call the API from a browser page of another site (none by default);
    ``attention_cache``: how many images' attention maps are kept for repeated clicks (0 = none).
    """

    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    queue: int = DEFAULT_QUEUE
    workers: int = DEFAULT_WORKERS
    api_key: str | None = None
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    attention_cache: int = DEFAULT_ATTENTION_CACHE
    model_name: str = ""

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ConfigError(f"--max_upload_mb must be positive, got {self.max_upload_mb:g}")
        if self.max_pixels < 1:
            raise ConfigError(f"--max_pixels must be positive, got {self.max_pixels}")
        if self.queue < 1:
            raise ConfigError(f"--queue must be at least 1, got {self.queue}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.workers > self.queue:
            raise ConfigError(f"--workers {self.workers} is more than --queue {self.queue}: extra workers would never "
                              "have work; raise --queue or lower --workers")
        if self.attention_cache < 0:
            raise ConfigError(f"attention_cache must be 0 or more, got {self.attention_cache}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError(f"--api_key (or {API_KEY_VARIABLE}) is empty; give a key or leave it unset")

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes (MiB)."""
        return int(self.max_upload_mb * BYTES_PER_MB)


def api_key_from_environment(given: str | None) -> str | None:
    """The ``--api_key`` flag when given, else ``DETR_API_KEY`` when set and non-empty, else None."""
    if given is not None:
        return given
    return os.environ.get(API_KEY_VARIABLE) or None
