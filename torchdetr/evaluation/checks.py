"""What COCO evaluation accepts: IoU types and backends, and the checks its inputs share, with the
error (:class:`CocoFormatError`) that names the file, entry and field at fault."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, MissingFileError

IOU_TYPES: tuple[str, ...] = ("bbox", "segm")
AUTO_BACKEND = "auto"  # faster_coco_eval when it is installed (same 12 stats, several times faster), else pycocotools
BACKENDS: tuple[str, ...] = (AUTO_BACKEND, "pycocotools", "faster_coco_eval")
SHORT_REPR_CHARS = 80  # values quoted in error messages are cut to this length


class CocoFormatError(DataError):
    """A ground-truth or results file (or prediction dict) that COCO evaluation cannot use."""


def check_iou_type(iou_type: str) -> None:
    if iou_type not in IOU_TYPES:
        raise ConfigError(f"iou_type must be one of {list(IOU_TYPES)}, got {iou_type!r}")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


def resolve_backend(backend: str) -> str:
    """The implementation ``backend`` names: ``auto`` → ``faster_coco_eval`` when importable, else ``pycocotools``."""
    check_backend(backend)
    if backend != AUTO_BACKEND:
        return backend
    import importlib.util

    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") is not None else "pycocotools"


def quiet() -> contextlib.AbstractContextManager:
    """Swallow pycocotools' progress prints ("Loading and preparing results...", ...)."""
    return contextlib.redirect_stdout(io.StringIO())


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def short(v: object, limit: int = SHORT_REPR_CHARS) -> str:
    """``repr(v)``, cut to ``limit`` characters for an error message."""
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_box(box: object, where: str) -> list[float]:
    """A COCO ``bbox`` [x, y, width, height] of finite numbers with width, height >= 0, as floats."""
    if not isinstance(box, list | tuple) or len(box) != 4 or not all(is_number(v) for v in box):
        raise CocoFormatError(f"{where}: 'bbox' must be 4 finite numbers [x, y, width, height], got {short(box)}")
    if box[2] < 0 or box[3] < 0:
        raise CocoFormatError(f"{where}: 'bbox' {short(box)} has a negative width or height")
    return [float(v) for v in box]


def load_json(path: str | Path, what: str) -> Any:
    """The content of the JSON file ``path`` (``what`` names it in errors: "annotation file", "results file")."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{what} not found: {path}")
    if path.is_dir():
        raise CocoFormatError(f"{what} {path} is a directory, expected a JSON file")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise CocoFormatError(f"{what} {path} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise CocoFormatError(f"{what} {path} is not a text JSON file: {err}") from None
