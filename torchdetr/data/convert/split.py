"""Deterministic train/val assignment from a hash of the file name.

Each image's split depends only on its own name, the seed and the fraction, so adding or removing
images never moves the others between splits (unlike shuffling a list and cutting it).
"""

from __future__ import annotations

import hashlib

from ...errors import ConfigError

HASH_BYTES = 8  # 64 bits of SHA-1: a uniform number in [0, 1) with negligible bias


def hash_fraction(name: str, seed: int) -> float:
    """A number in ``[0, 1)`` that is a pure function of ``(name, seed)`` and looks uniform across names."""
    digest = hashlib.sha1(f"{seed}\0{name}".encode()).digest()[:HASH_BYTES]
    return int.from_bytes(digest, "big") / 2 ** (8 * HASH_BYTES)


def check_val_fraction(val_fraction: float) -> None:
    """Raise :class:`~torchdetr.errors.ConfigError` unless ``val_fraction`` is in ``[0, 1)``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val_fraction must be in [0, 1), got {val_fraction}")


def hash_split(name: str, seed: int, val_fraction: float) -> str:
    """``"val"`` for about ``val_fraction`` of all names, else ``"train"``; the same answer every time.

    Raises:
        ConfigError: ``val_fraction`` is outside ``[0, 1)``.
    """
    check_val_fraction(val_fraction)
    return "val" if hash_fraction(name, seed) < val_fraction else "train"


def assign_splits(names: list[str], seed: int, val_fraction: float) -> dict[str, str]:
    """:func:`hash_split` for each name, except that neither split is left empty when it need not be.

    With few images the hash can put none (or all) of them in ``val``; then the name whose hash is nearest
    the cut moves over — the one that a slightly larger (or smaller) ``val_fraction`` would move first.
    """
    splits = {name: hash_split(name, seed, val_fraction) for name in names}
    if val_fraction > 0 and len(names) >= 2:
        counts = {s: sum(1 for v in splits.values() if v == s) for s in ("train", "val")}
        if counts["val"] == 0:
            splits[min(names, key=lambda n: hash_fraction(n, seed))] = "val"
        elif counts["train"] == 0:
            splits[max(names, key=lambda n: hash_fraction(n, seed))] = "train"
    return splits
