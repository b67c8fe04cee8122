"""YOLO txt labels (Darknet, Ultralytics, Roboflow exports) → :class:`~.records.SourceDataset`.

**Layout.** Any folder tree under ``SRC`` holding images. The label file of ``.../images/.../a.jpg`` is
``.../labels/.../a.txt`` (Ultralytics' rule: the last ``images`` folder becomes ``labels``), or ``a.txt``
next to the image (Darknet). The layout's own ``images`` folder is left out of the output name
(``SRC/images/train/a.jpg`` becomes ``OUT/images/train/a.jpg``, ``file_name`` ``train/a.jpg``).
A ``train``/``val``/``valid``/``test`` folder in the image's path decides its split. Class names come from
``--classes``, else ``SRC/classes.txt``, ``SRC/obj.names`` or the ``names`` of ``SRC/data.yaml`` /
``SRC/dataset.yaml``; line *i* (or ``names[i]``) is class index *i*, which becomes category id *i + 1*.

**Coordinates.** One object a line: ``class cx cy w h``, all but the class normalised by the image
width/height (of the EXIF-upright picture, as Ultralytics reads it); or ``class x1 y1 x2 y2 ...`` for a
segmentation polygon. In COCO pixels, with the real image size ``W × H`` read from the file::

    x = (cx - w / 2) * W      w_px = w * W
    y = (cy - h / 2) * H      h_px = h * H

Values outside ``[0, 1]`` by more than :data:`NORMALISED_SLACK` are taken for pixel coordinates written by
mistake and the line is dropped (``bad_box``); smaller overshoots are clipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ...errors import MissingFileError
from ..io import UnreadableImageError, find_image_files, read_image_header
from .classes import read_class_names
from .records import (
    BAD_BOX,
    LABEL_WITHOUT_IMAGE,
    UNKNOWN_CLASS,
    UNREADABLE_IMAGE,
    UNREADABLE_LABEL,
    ConversionProblem,
    LabeledBox,
    LabeledImage,
    SourceDataset,
    split_from_folders,
)

CLASS_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml")
NOT_LABEL_FILES = frozenset({"classes.txt", "train.txt", "val.txt", "valid.txt", "test.txt", "trainval.txt"})
NORMALISED_SLACK = 0.01
BOX_VALUES = 4  # cx cy w h
MIN_POLYGON_VALUES = 6  # three points


def find_class_file(src: Path) -> Path:
    """The class-name file of a YOLO folder (the first of :data:`CLASS_FILES` in ``src``).

    Raises:
        MissingFileError: none exists; the message says how to give the names.
    """
    for name in CLASS_FILES:
        if (src / name).is_file():
            return src / name
    raise MissingFileError(
        f"{src}: no class names for the YOLO labels: put them in {src / 'classes.txt'} (one a line, line i = class i), "
        f"or in data.yaml 'names', or pass --classes FILE"
    )


def label_file_for(image: Path, src: Path) -> Path | None:
    """The YOLO label file of ``image``: ``labels/`` twin of the last ``images/`` folder, else a sibling ``.txt``."""
    parts = list(image.relative_to(src).parts)
    if "images" in parts[:-1]:
        i = len(parts) - 2 - parts[:-1][::-1].index("images")
        parts[i] = "labels"
        twin = (src / Path(*parts)).with_suffix(".txt")
        if twin.is_file():
            return twin
    sibling = image.with_suffix(".txt")
    return sibling if sibling.is_file() else None


def output_name(relative: Path, taken: set[str]) -> str:
    """The image's name under the output ``images/``: its path without the ``images`` folder of the YOLO layout.

    ``images/train/a.jpg`` → ``train/a.jpg``, ``valid/images/a.jpg`` → ``valid/a.jpg``; the full relative path
    is kept when the short name is already ``taken``.
    """
    parts = list(relative.parts)
    if "images" in parts[:-1]:
        del parts[len(parts) - 2 - parts[:-1][::-1].index("images")]
    name = Path(*parts).as_posix()
    return name if name not in taken else relative.as_posix()


def _parse_line(tokens: list[str], names: Sequence[str], size: tuple[int, int]) -> LabeledBox | tuple[str, str]:
    """One label line → a box in pixels, or ``(problem kind, detail)`` saying what is wrong with it."""
    try:
        index_value = float(tokens[0])
        values = [float(t) for t in tokens[1:]]
    except ValueError:
        return BAD_BOX, "not numbers"
    if not index_value.is_integer():
        return BAD_BOX, f"class index {tokens[0]} is not an integer"
    index = int(index_value)
    if not 0 <= index < len(names):
        return UNKNOWN_CLASS, f"class index {index}, but there are {len(names)} class names (0..{len(names) - 1})"
    if not all(math.isfinite(v) for v in values):
        return BAD_BOX, "non-finite value"
    if not (len(values) == BOX_VALUES or (len(values) >= MIN_POLYGON_VALUES and len(values) % 2 == 0)):
        return BAD_BOX, f"expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', got {len(tokens)} values"
    if any(v < -NORMALISED_SLACK or v > 1 + NORMALISED_SLACK for v in values):
        return BAD_BOX, "coordinates must be normalised to [0, 1] (pixel values written by mistake?)"
    width, height = size
    if len(values) == BOX_VALUES:
        cx, cy, w, h = values
        return LabeledBox(names[index], (cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)
    polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(values)]
    xs, ys = polygon[0::2], polygon[1::2]
    return LabeledBox(names[index], min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys), segmentation=[polygon])


def read_yolo(src: Path, class_names: Sequence[str] | None = None) -> SourceDataset:
    """Read every image and YOLO label file under ``src`` (see the module docstring).

    Raises:
        MissingFileError: no class names were given and none is found in ``src``.
    """
    class_file = None
    if class_names is None:
        class_file = find_class_file(src)
        class_names = read_class_names(class_file)
    names = list(class_names)
    problems: list[ConversionProblem] = []
    images: list[LabeledImage] = []
    claimed: set[Path] = set()
    image_dirs: set[Path] = set()
    taken: set[str] = set()
    for path in find_image_files(src):
        relative = path.relative_to(src)
        image_dirs.add(path.parent)
        label_file = label_file_for(path, src)
        if label_file is not None:
            claimed.add(label_file)
        try:
            header = read_image_header(path)
        except UnreadableImageError as err:
            problems.append(ConversionProblem(UNREADABLE_IMAGE, relative.as_posix(), str(err)))
            continue
        file_name = output_name(relative, taken)
        taken.add(file_name)
        image = LabeledImage(path, file_name, header, split=split_from_folders(relative), label_file=label_file)
        if label_file is not None:
            where = label_file.relative_to(src).as_posix()
            try:
                text = label_file.read_text()
            except (OSError, UnicodeDecodeError) as err:
                problems.append(ConversionProblem(UNREADABLE_LABEL, where, f"cannot read ({err})"))
                text = ""
            for number, line in enumerate(text.splitlines(), start=1):
                tokens = line.split()
                if not tokens or tokens[0].startswith("#"):
                    continue
                parsed = _parse_line(tokens, names, image.size)
                if isinstance(parsed, tuple):
                    kind, detail = parsed
                    problems.append(ConversionProblem(kind, f"{where}:{number}", f"{detail}: {line.strip()!r}"))
                else:
                    image.boxes.append(parsed)
        images.append(image)

    for txt in sorted(src.rglob("*.txt")):
        relative = txt.relative_to(src)
        if txt in claimed or txt == class_file or txt.name.lower() in NOT_LABEL_FILES or "readme" in txt.name.lower():
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        if "labels" in relative.parts[:-1] or txt.parent in image_dirs:
            problems.append(ConversionProblem(LABEL_WITHOUT_IMAGE, relative.as_posix(), f"no image named {txt.stem}.*"))
    has_folder_splits = any(im.split is not None for im in images)
    rule = "train/val/test folder names in the image paths" if has_folder_splits else None
    return SourceDataset(images, problems, class_names=names, split_rule=rule)
