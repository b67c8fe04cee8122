"""The record of one detected object, shared by the detector, the attention maps, drawing and serving."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box`` (x1, y1, x2, y2) in pixels of the input image, ``score`` in
    [0, 1], class id ``label`` (the model's category id) and its ``name``; ``query`` is the index
    of the object query that produced it (row of the decoder attention maps)."""

    box: tuple[float, float, float, float]
    score: float
    label: int
    name: str
    query: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self) | {"box": list(self.box)}
