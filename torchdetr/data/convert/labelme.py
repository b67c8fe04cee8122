"""LabelMe JSON (one file per image) → :class:`~.records.SourceDataset`.

**Layout.** Every ``*.json`` under ``SRC`` that has a ``shapes`` list. Its image is ``imagePath`` (relative to
the JSON file), else the image of the same stem next to it, else the picture embedded in ``imageData``
(written out as ``<json stem>.<format>``). A ``train``/``val``/``test`` folder in the path decides the split.

**Shapes.** ``rectangle`` (two opposite corners, in any order) → a box; ``polygon`` (3+ points) → its
bounding box, with the polygon kept as the COCO ``segmentation``. Other shape types (circle, line,
linestrip, point, mask) are dropped and counted (``unsupported_shape``).

**Coordinates.** LabelMe points are continuous pixel coordinates, ``(0, 0)`` at the top-left corner of the
picture as LabelMe showed it (EXIF orientation applied) — the same frame as COCO, so
``x = min(xs)``, ``w = max(xs) - min(xs)`` (likewise for y) with no offset.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from pathlib import Path, PurePosixPath

from ..io import ImageHeader, UnreadableImageError, find_image_files, read_image_header
from .images import label_frame_is_upright
from .records import (
    BAD_BOX,
    LABEL_WITHOUT_IMAGE,
    SIZE_MISMATCH,
    UNREADABLE_IMAGE,
    UNREADABLE_LABEL,
    UNSUPPORTED_SHAPE,
    ConversionProblem,
    LabeledBox,
    LabeledImage,
    SourceDataset,
    split_from_folders,
)

RECTANGLE, POLYGON = "rectangle", "polygon"
MIN_POINTS = {RECTANGLE: 2, POLYGON: 3}
FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp"}


def _shape_box(shape: object, where: str, problems: list[ConversionProblem]) -> LabeledBox | None:
    """One LabelMe shape → a box (and polygon), or None with a problem recorded."""
    if not isinstance(shape, dict):
        problems.append(ConversionProblem(BAD_BOX, where, f"shape is not an object: {shape!r:.60}"))
        return None
    label = str(shape.get("label", "")).strip()
    shape_type = shape.get("shape_type") or POLYGON  # LabelMe < 3 wrote polygons without a shape_type
    if shape_type not in MIN_POINTS:
        problems.append(ConversionProblem(
            UNSUPPORTED_SHAPE, where, f"{label}: shape_type {shape_type!r} (only rectangle/polygon)"))
        return None
    try:
        points = [(float(x), float(y)) for x, y in shape.get("points", [])]
    except (TypeError, ValueError):
        problems.append(ConversionProblem(BAD_BOX, where, f"{label}: points are not [x, y] number pairs"))
        return None
    if len(points) < MIN_POINTS[shape_type] or not all(math.isfinite(v) for p in points for v in p):
        problems.append(ConversionProblem(
            BAD_BOX, where, f"{label}: {shape_type} with {len(points)} points or non-finite values"))
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    segmentation = [[v for p in points for v in p]] if shape_type == POLYGON else None
    return LabeledBox(label, min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys), segmentation=segmentation)


def _find_image(json_file: Path, content: dict) -> Path | None:
    """The image file a LabelMe JSON refers to, or None."""
    candidates = []
    image_path = content.get("imagePath")
    if isinstance(image_path, str) and image_path:
        image_path = image_path.replace("\\", "/")  # written on Windows
        candidates += [json_file.parent / image_path, json_file.parent / PurePosixPath(image_path).name]
    candidates += [p for p in sorted(json_file.parent.glob(f"{json_file.stem}.*")) if p != json_file]
    found = next((c for c in candidates if c.is_file() and c.suffix.lower() != ".json"), None)
    return found.resolve() if found is not None else None


def _embedded(content: dict) -> tuple[bytes, ImageHeader] | None:
    """The picture stored in ``imageData`` and its header, or None when absent or undecodable."""
    data = content.get("imageData")
    if not isinstance(data, str) or not data:
        return None
    try:
        raw = base64.b64decode(data, validate=False)
        return raw, read_image_header(io.BytesIO(raw))  # type: ignore[arg-type]
    except (binascii.Error, UnreadableImageError):
        return None


def read_labelme(src: Path) -> SourceDataset:
    """Read every LabelMe JSON file and image under ``src`` (see the module docstring)."""
    problems: list[ConversionProblem] = []
    images: list[LabeledImage] = []
    claimed: dict[Path, str] = {}
    for json_file in sorted(src.rglob("*.json")):
        relative = json_file.relative_to(src)
        where = relative.as_posix()
        if any(part.startswith(".") for part in relative.parts):
            continue
        try:
            content = json.loads(json_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append(ConversionProblem(UNREADABLE_LABEL, where, f"not valid JSON ({err})"))
            continue
        if not isinstance(content, dict) or not isinstance(content.get("shapes"), list):
            problems.append(ConversionProblem(UNREADABLE_LABEL, where, "not a LabelMe file (no 'shapes' list); ignored"))
            continue
        image_file = _find_image(json_file, content)
        data = None
        if image_file is not None:
            file_name = image_file.relative_to(src).as_posix() if image_file.is_relative_to(src) else image_file.name
            if image_file in claimed:
                problems.append(ConversionProblem(
                    UNREADABLE_LABEL, where, f"a second label file for {file_name} (first: {claimed[image_file]}); ignored"))
                continue
            claimed[image_file] = where
            try:
                header = read_image_header(image_file)
            except UnreadableImageError as err:
                problems.append(ConversionProblem(UNREADABLE_IMAGE, file_name, str(err)))
                continue
        else:
            embedded = _embedded(content)
            if embedded is None:
                problems.append(ConversionProblem(
                    LABEL_WITHOUT_IMAGE, where, f"image {content.get('imagePath')!r} not found and no imageData"))
                continue
            data, header = embedded
            file_name = relative.with_suffix(FORMAT_SUFFIX.get(header.format or "", ".png")).as_posix()
        try:
            recorded = (int(content["imageWidth"]), int(content["imageHeight"]))
        except (KeyError, TypeError, ValueError):
            recorded = None
        image = LabeledImage(image_file or json_file, file_name, header, split=split_from_folders(Path(file_name)),
                             label_file=json_file, data=data, upright=label_frame_is_upright(header, recorded))
        if recorded is not None and recorded != image.size:
            problems.append(ConversionProblem(
                SIZE_MISMATCH, where, f"imageWidth x imageHeight is {recorded[0]}x{recorded[1]}, the image is "
                f"{image.size[0]}x{image.size[1]}; the real size is used"))
        for shape in content["shapes"]:
            box = _shape_box(shape, where, problems)
            if box is not None:
                image.boxes.append(box)
        images.append(image)

    for path in find_image_files(src):
        if path.resolve() not in claimed:
            relative = path.relative_to(src)
            try:
                header = read_image_header(path)
            except UnreadableImageError as err:
                problems.append(ConversionProblem(UNREADABLE_IMAGE, relative.as_posix(), str(err)))
                continue
            images.append(LabeledImage(path, relative.as_posix(), header, split=split_from_folders(relative)))
    rule = "train/val/test folder names in the paths" if any(im.split for im in images) else None
    return SourceDataset(images, problems, class_names=None, split_rule=rule)
