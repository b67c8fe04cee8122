"""Image files of a source dataset: the labels' frame and how a picture is written to the output.

Which files are images, their headers (size, EXIF orientation, mode) and the EXIF rule itself live in the
one image loader, :mod:`torchdetr.data.io`.

**EXIF orientation.** A camera may store pixels sideways and set the EXIF ``Orientation`` tag (values 2..8)
so that viewers turn the picture upright. Labelling tools (LabelMe, CVAT, Ultralytics' YOLO tools, Roboflow)
show — and so label — the *upright* picture, while a training loader that ignores the tag (the original
DETR's ``PIL.Image.open(...).convert("RGB")``, ``torchvision.io.decode_image`` by default) sees the stored
pixels. Orientations 5..8 also swap width and height. The converters therefore never pass such a file
through unchanged: they re-encode it with the pixels in the frame the labels were drawn in and no tag
(see :func:`label_frame_is_upright` and :func:`write_image`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from PIL import Image

from ..io import ORIENTATION_TAG, ImageHeader, to_upright

JPEG_QUALITY = 95  # used only when an image must be re-encoded (EXIF orientation applied)
EXIF_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")  # formats that can carry the (tag-less) EXIF block on


def label_frame_is_upright(header: ImageHeader, recorded_size: tuple[int, int] | None) -> bool:
    """Decide whether labels were drawn on the upright (EXIF-applied) picture or on the stored pixels.

    Labelling tools show the upright picture, so that is the default. A label file that records the image
    size (VOC ``<size>``, LabelMe ``imageWidth``/``imageHeight``) can prove otherwise: when the recorded size
    equals the stored size but not the upright one (a 90° orientation), the tool used the stored pixels.
    """
    if recorded_size is None or not header.is_oriented:
        return True
    return not (tuple(recorded_size) == header.stored_size and header.stored_size != header.upright_size)


def write_image(src: Path, dst: Path, *, header: ImageHeader, upright: bool, copy: bool = False) -> str:
    """Put the image ``src`` at ``dst`` with its pixels in the labels' frame and no EXIF orientation.

    Files without an orientation tag are hard-linked (or copied, when ``copy`` is true or linking fails,
    e.g. across file systems). Files with a tag are re-encoded in their own format (JPEG at quality
    :data:`JPEG_QUALITY`): turned upright when ``upright`` (:func:`torchdetr.data.io.to_upright`), else with
    the stored pixels kept and the tag removed.

    Returns:
        How the file was written: ``"link"``, ``"copy"`` or ``"reencode"``.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    if header.is_oriented:
        with Image.open(src) as image:
            image.load()
            exif = image.getexif()
            fmt = image.format
            pixels = to_upright(image, str(src)) if upright else image.copy()
        exif.pop(ORIENTATION_TAG, None)
        options: dict = {"exif": exif.tobytes()} if fmt in EXIF_FORMATS else {}
        if fmt == "JPEG":
            options["quality"] = JPEG_QUALITY
        pixels.save(dst, format=fmt, **options)
        return "reencode"
    if not copy:
        try:
            os.link(src, dst)
            return "link"
        except OSError:
            pass
    shutil.copy2(src, dst)
    return "copy"
