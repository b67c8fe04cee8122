"""Pascal VOC XML (LabelImg, CVAT "PASCAL VOC" export, the VOC devkit) → :class:`~.records.SourceDataset`.

**Layout.** Either the devkit layout ``SRC/Annotations/*.xml`` + ``SRC/JPEGImages/*`` (+ optional
``SRC/ImageSets/Main/{train,val,test}.txt``, which then decide the split), or XML files next to their
images anywhere under ``SRC`` (LabelImg's default). An XML file is paired with the image of the same
stem in the same relative folder; failing that, with the image its ``<filename>`` names.

**Coordinates.** VOC ``<bndbox>`` values are 1-based *inclusive* pixel indices: ``xmin = 1`` is the first
pixel column and ``xmax = W`` the last. In COCO's continuous frame the box spans from the left edge of
pixel ``xmin`` to the right edge of pixel ``xmax``::

    x = xmin - 1        w = xmax - xmin + 1
    y = ymin - 1        h = ymax - ymin + 1

A box written with ``xmax <= xmin`` or ``ymax <= ymin`` is a click, not a box, and is dropped
(``degenerate_box``). Fractional values (written by some tools) go through the same formulas.
``<difficult>``/``<truncated>`` flags are not carried over; difficult boxes are kept as ordinary boxes.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from ..io import UnreadableImageError, find_image_files, read_image_header
from .images import label_frame_is_upright
from .records import (
    BAD_BOX,
    DEGENERATE_BOX,
    LABEL_WITHOUT_IMAGE,
    SIZE_MISMATCH,
    UNREADABLE_IMAGE,
    UNREADABLE_LABEL,
    ConversionProblem,
    LabeledBox,
    LabeledImage,
    SourceDataset,
)

ANNOTATIONS_DIR = "Annotations"
IMAGES_DIR = "JPEGImages"
IMAGE_SETS_DIR = Path("ImageSets") / "Main"
SPLIT_LISTS = ("train", "val", "test")


def _read_split_lists(src: Path) -> dict[str, str]:
    """``{stem: split}`` from ``ImageSets/Main/{train,val,test}.txt``; empty when there are no train/val lists."""
    folder = src / IMAGE_SETS_DIR
    if not ((folder / "train.txt").is_file() and (folder / "val.txt").is_file()):
        return {}
    splits: dict[str, str] = {}
    for split in SPLIT_LISTS:
        path = folder / f"{split}.txt"
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    splits.setdefault(line.split()[0], split)
    return splits


def _parse_box(obj: ET.Element, where: str, problems: list[ConversionProblem]) -> LabeledBox | None:
    """One ``<object>`` → a COCO box (see the module docstring), or None with a problem recorded."""
    label = (obj.findtext("name") or "").strip()
    box = obj.find("bndbox")
    if box is None:
        problems.append(ConversionProblem(BAD_BOX, where, f"object {label!r} has no <bndbox>"))
        return None
    try:
        xmin, ymin, xmax, ymax = (float(box.findtext(tag) or "nan") for tag in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError as err:
        problems.append(ConversionProblem(BAD_BOX, where, f"object {label!r}: {err}"))
        return None
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        problems.append(ConversionProblem(BAD_BOX, where, f"object {label!r}: missing or non-finite <bndbox> value"))
        return None
    if xmax <= xmin or ymax <= ymin:
        problems.append(ConversionProblem(
            DEGENERATE_BOX, where, f"{label} xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}: no extent"))
        return None
    return LabeledBox(label, xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1)


def _recorded_size(root: ET.Element) -> tuple[int, int] | None:
    """``(width, height)`` from ``<size>``, or None when absent, zero or unparsable."""
    try:
        width, height = int(float(root.findtext("size/width") or 0)), int(float(root.findtext("size/height") or 0))
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def read_voc(src: Path) -> SourceDataset:
    """Read every XML file and image of a VOC folder (see the module docstring for layout and coordinates)."""
    ann_dir = src / ANNOTATIONS_DIR if (src / ANNOTATIONS_DIR).is_dir() else src
    img_dir = src / IMAGES_DIR if (src / IMAGES_DIR).is_dir() else src
    split_of = _read_split_lists(src)
    problems: list[ConversionProblem] = []
    image_paths = find_image_files(img_dir)
    by_stem = {}
    for path in image_paths:
        by_stem.setdefault((path.relative_to(img_dir).parent, path.stem), path)
    labels_of: dict[Path, tuple[Path, ET.Element]] = {}
    for xml_file in sorted(ann_dir.rglob("*.xml")):
        where = xml_file.relative_to(src).as_posix()
        relative = xml_file.relative_to(ann_dir)
        try:
            root = ET.parse(xml_file).getroot()
        except (ET.ParseError, OSError) as err:
            problems.append(ConversionProblem(UNREADABLE_LABEL, where, f"not valid XML ({err})"))
            continue
        if root.tag != "annotation":
            continue  # some other XML file, not a VOC annotation
        image = by_stem.get((relative.parent, relative.stem))
        named = (root.findtext("filename") or "").strip()
        if image is None and named:
            for candidate in (img_dir / relative.parent / named, img_dir / named):
                if candidate.is_file():
                    image = candidate
                    break
        if image is None:
            problems.append(ConversionProblem(
                LABEL_WITHOUT_IMAGE, where, f"no image {relative.stem}.* or {named!r} in {img_dir}"))
            continue
        labels_of[image] = (xml_file, root)

    images: list[LabeledImage] = []
    for path in image_paths:
        file_name = path.relative_to(img_dir).as_posix()
        xml_file, root = labels_of.get(path, (None, None))
        try:
            header = read_image_header(path)
        except UnreadableImageError as err:
            problems.append(ConversionProblem(UNREADABLE_IMAGE, file_name, str(err)))
            continue
        image = LabeledImage(path, file_name, header, split=split_of.get(path.stem), label_file=xml_file)
        if xml_file is not None and root is not None:
            where = xml_file.relative_to(src).as_posix()
            recorded = _recorded_size(root)
            image.upright = label_frame_is_upright(header, recorded)
            if recorded is not None and recorded != image.size:
                problems.append(ConversionProblem(
                    SIZE_MISMATCH, where, f"<size> says {recorded[0]}x{recorded[1]}, the image is "
                    f"{image.size[0]}x{image.size[1]}; the real size is used"))
            for obj in root.iter("object"):
                box = _parse_box(obj, where, problems)
                if box is not None:
                    image.boxes.append(box)
        images.append(image)
    rule = f"VOC lists {IMAGE_SETS_DIR.as_posix()}/{{train,val,test}}.txt" if split_of else None
    return SourceDataset(images, problems, class_names=None, split_rule=rule)
