"""Image files: which files are images, their real size from the header, and EXIF orientation.

Only the header is read (``PIL.Image.open`` is lazy), so probing thousands of images is fast.

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
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
UPRIGHT = 1  # the orientation value that means "stored pixels are already upright"
AXES_SWAPPING_ORIENTATIONS: frozenset[int] = frozenset({5, 6, 7, 8})
JPEG_QUALITY = 95  # used only when an image must be re-encoded (EXIF orientation applied)


class UnreadableImageError(ValueError):
    """An image file that PIL cannot open (missing, truncated header, not an image)."""


@dataclass(frozen=True)
class ImageHeader:
    """Size and orientation of an image file, from its header.

    ``width``/``height`` are those of the stored pixel array; ``orientation`` is the EXIF tag (1 when absent).
    """

    width: int
    height: int
    orientation: int = UPRIGHT
    format: str | None = None

    @property
    def stored_size(self) -> tuple[int, int]:
        """``(width, height)`` of the pixels as stored (what a loader that ignores EXIF sees)."""
        return self.width, self.height

    @property
    def upright_size(self) -> tuple[int, int]:
        """``(width, height)`` after applying the EXIF orientation (what viewers and labelling tools show)."""
        if self.orientation in AXES_SWAPPING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height

    @property
    def is_oriented(self) -> bool:
        """True when the EXIF tag asks viewers to flip or rotate the stored pixels."""
        return self.orientation != UPRIGHT


def is_image_file(path: Path) -> bool:
    """True for a regular file whose extension is one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def find_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursively), in sorted order; hidden files and folders are skipped."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if is_image_file(path):
            found.append(path)
    return sorted(found)


def read_image_header(path: Path) -> ImageHeader:
    """Size and EXIF orientation of ``path``, reading only the header.

    Raises:
        UnreadableImageError: the file is missing or is not an image PIL can open; the message names the file.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = int(image.getexif().get(ORIENTATION_TAG, UPRIGHT))
            except Exception:  # a corrupt EXIF block is not a reason to reject the pixels
                orientation = UPRIGHT
            if orientation not in range(1, 9):
                orientation = UPRIGHT
            return ImageHeader(width, height, orientation, image.format)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UnreadableImageError(f"{path}: cannot read image ({err})") from err


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
    :data:`JPEG_QUALITY`): turned upright when ``upright``, else with the stored pixels kept and the tag removed.

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
            pixels = ImageOps.exif_transpose(image) if upright else image.copy()
        exif.pop(ORIENTATION_TAG, None)
        options: dict = {"exif": exif.tobytes()} if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else {}
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
