"""What a format reader hands to the COCO writer: images with labelled boxes, and the problems it met.

Readers (``voc``, ``yolo``, ``labelme``) only parse and convert coordinates to COCO pixels
(``x, y`` = top-left corner, ``w, h`` = size, continuous pixel units with ``(0, 0)`` at the top-left corner
of the top-left pixel). Everything format-independent — class ids, clipping, dropping empty or duplicate
boxes, the train/val split, copying images, the report — is done once, in :mod:`.writer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..io import ImageHeader

# Problem kinds. Each is either a reason something was dropped, or a note on something kept.
UNKNOWN_CLASS = "unknown_class"  # dropped: label not in the class list
DEGENERATE_BOX = "degenerate_box"  # dropped: zero or negative width/height as written
BAD_BOX = "bad_box"  # dropped: unparsable, NaN/inf or out-of-range numbers
OUTSIDE_IMAGE = "outside_image"  # dropped: nothing left after clipping to the image
DUPLICATE_BOX = "duplicate_box"  # dropped: same class and same box twice in one image
UNSUPPORTED_SHAPE = "unsupported_shape"  # dropped: LabelMe circle/line/point/...
UNREADABLE_IMAGE = "unreadable_image"  # dropped: image (and its labels) PIL cannot open
UNREADABLE_LABEL = "unreadable_label"  # dropped: label file that cannot be parsed
LABEL_WITHOUT_IMAGE = "label_without_image"  # dropped: label file whose image is not found
CLIPPED_BOX = "clipped_box"  # kept: box partly outside the image, clipped
IMAGE_WITHOUT_LABELS = "image_without_labels"  # kept: image with no label file, written as an empty image
SIZE_MISMATCH = "size_mismatch"  # kept: size recorded in the label file differs from the real size
EXIF_REENCODED = "exif_reencoded"  # kept: image re-encoded without its EXIF orientation tag
SIMILAR_CLASS_NAMES = "similar_class_names"  # kept: class names equal but for case/spaces ("RBC", "rbc ")

# kinds that drop one box (the others drop a whole file, or drop nothing)
BOX_DROP_KINDS: frozenset[str] = frozenset({UNKNOWN_CLASS, DEGENERATE_BOX, BAD_BOX, OUTSIDE_IMAGE, DUPLICATE_BOX,
                                            UNSUPPORTED_SHAPE})
KEPT_KINDS: frozenset[str] = frozenset({CLIPPED_BOX, IMAGE_WITHOUT_LABELS, SIZE_MISMATCH, EXIF_REENCODED,
                                        SIMILAR_CLASS_NAMES})


@dataclass(frozen=True)
class ConversionProblem:
    """One thing the converter dropped or changed: its kind, the source file, and a human detail."""

    kind: str
    file: str
    detail: str = ""

    @property
    def dropped(self) -> bool:
        """True when data was left out of the output because of this problem."""
        return self.kind not in KEPT_KINDS


@dataclass
class LabeledBox:
    """One object: its class name and COCO box in pixels of the labels' frame (not yet clipped).

    ``segmentation`` is a COCO polygon list (``[[x1, y1, x2, y2, ...]]``) when the source had a polygon.
    """

    label: str
    x: float
    y: float
    w: float
    h: float
    segmentation: list[list[float]] | None = None


@dataclass
class LabeledImage:
    """One image of the source and its boxes.

    Attributes:
        source: the image file, or the label file when the image is embedded (``data`` then holds its bytes).
        file_name: path of the output image relative to ``images/`` (POSIX separators, unique).
        header: real size and EXIF orientation of the image file.
        upright: the labels were drawn on the EXIF-upright picture (see :func:`.images.label_frame_is_upright`).
        split: the split the source itself assigns (VOC ``ImageSets``, a ``train``/``val`` folder), or None.
        label_file: the label file this image's boxes came from; None when it has none.
        data: the encoded image when it is embedded in the label file (LabelMe ``imageData``).
    """

    source: Path
    file_name: str
    header: ImageHeader
    boxes: list[LabeledBox] = field(default_factory=list)
    upright: bool = True
    split: str | None = None
    label_file: Path | None = None
    data: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the picture in the labels' frame."""
        return self.header.upright_size if self.upright else self.header.stored_size


@dataclass
class SourceDataset:
    """Everything a reader found in the source folder.

    ``class_names`` is the class order the source defines (YOLO's index order), or None when classes are
    only known by name (VOC, LabelMe); ``split_rule`` says how ``LabeledImage.split`` was decided.
    """

    images: list[LabeledImage]
    problems: list[ConversionProblem] = field(default_factory=list)
    class_names: list[str] | None = None
    split_rule: str | None = None


def split_from_folders(relative: Path) -> str | None:
    """The split named by a folder in ``relative`` (``train``, ``val``/``valid``/``validation``, ``test``), or None.

    This is how Ultralytics (``images/train/...``) and Roboflow (``train/images/...``, ``valid/...``) exports
    mark their split. The innermost matching folder wins.
    """
    aliases = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
    for part in reversed(relative.parent.parts):
        if part.lower() in aliases:
            return aliases[part.lower()]
    return None
