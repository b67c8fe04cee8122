"""The one image loader: every path that reads a picture goes through here.

Training and evaluation datasets (:mod:`.coco`), ``detr data check`` (:mod:`.check`, headers only), the
converters (:mod:`.convert`), prediction (``inference.detector.to_pil_image``) and, later, the server all
use these functions, so a picture is seen the same way everywhere.

**Which files are images.** :data:`IMAGE_EXTENSIONS` (case-insensitive); :func:`find_image_files` walks a
folder recursively, sorted, skipping hidden files and folders (names starting with ``.``, e.g. macOS
``._photo.jpg`` resource forks, which are not pictures).

**EXIF orientation.** A camera may store the pixels sideways and set the EXIF ``Orientation`` tag (2..8)
so that viewers turn the picture upright. Labelling tools label the upright picture, and a user looks at
the upright picture, so the loader turns every image upright (:func:`to_upright`, Pillow's
``ImageOps.exif_transpose``): in training, evaluation and prediction alike. The one exception is a dataset
whose annotation file gives the *stored* size of a 90°-turned picture (:func:`load_rgb_image` with
``expected_size``): its labels were drawn on the stored pixels, which are then used as stored.

**Modes → 8-bit RGB** (:func:`to_rgb`, one rule for files and for PIL images passed to the detector):

==========================  ===================================================================================
``RGB``                     unchanged
``L``, ``1``, ``CMYK``,     Pillow's conversion (grey copied to the three channels; CMYK without colour
``YCbCr``, ``HSV``          management)
``P`` (palette)             the palette colours (through RGBA when the palette has a transparent entry)
alpha (``RGBA``, ``LA``,    composited over :data:`ALPHA_BACKGROUND` (white), as a viewer or a web page shows
``PA``, ``RGBa``, tRNS)     the picture: out = a * colour + (1 - a) * white. Dropping alpha instead would show
                            the arbitrary (often black) colour stored under transparent pixels.
``LAB``                     converted to sRGB with Pillow's ImageCms (a plain ``convert`` copies the channels)
16-bit (``I;16*``)          value * 255 / 65535, rounded: the full 16-bit range maps to the full 8-bit range,
                            the same for every image of a dataset (no per-image contrast stretch)
32-bit integer (``I``)      as 16-bit when every value is in 0..65535 (Pillow reads some 16-bit files as ``I``);
                            other values (negative, larger) imply no 8-bit scale: refused
32-bit float (``F``)        value * 255, rounded, when every value is in [0, 1] (the float-image convention);
                            other ranges are refused; NaN or infinite pixels are refused (no value is right
                            for them; replace them before training)
==========================  ===================================================================================

**Segment-id PNGs** (COCO panoptic, :func:`load_segment_ids`) are not pictures to look at: their colours are
numbers (id = R + 256·G + 256²·B), so they are read as stored (no EXIF turn, no mode conversion but a
palette's colours; alpha is ignored) and refused in any mode without three 8-bit channels.

Refusals, unreadable and truncated files, and images larger than Pillow's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``, raise it deliberately for huge images) are :class:`~torchdetr.errors.DataError`
naming the file; a missing file is :class:`~torchdetr.errors.MissingFileError`. Multi-frame files (GIF,
TIFF stacks) give their first frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageCms, ImageOps

from ..errors import DataError, MissingFileError
from ..structures import rgb2id

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
UPRIGHT = 1  # the orientation value that means "stored pixels are already upright"
VALID_ORIENTATIONS = range(1, 9)
AXES_SWAPPING_ORIENTATIONS: frozenset[int] = frozenset({5, 6, 7, 8})

ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)  # transparent pixels become white
ALPHA_MODES: frozenset[str] = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
SIXTEEN_BIT_MAX = 65535
FLOAT_MAX = 1.0  # float pixels are in [0, FLOAT_MAX]
UINT8_MAX = 255
HIGH_BIT_DEPTH_MODES: frozenset[str] = SIXTEEN_BIT_MODES | {"I", "F"}
SEGMENT_ID_MODES: frozenset[str] = frozenset({"RGB", "RGBA", "P"})  # modes whose colours can encode segment ids


class UnreadableImageError(DataError):
    """An image file that Pillow cannot open or decode (truncated, not an image, too large); names the file."""


# ----------------------------------------------------------------------------------------------
# Which files are images
# ----------------------------------------------------------------------------------------------
def is_image_file(path: Path) -> bool:
    """True for a regular file whose extension is one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def image_suffixes() -> str:
    """:data:`IMAGE_EXTENSIONS` as one sorted, comma-separated string (for messages)."""
    return ", ".join(sorted(IMAGE_EXTENSIONS))


def find_image_files(root: Path) -> list[Path]:
    """Every image file under the folder ``root`` (recursively), sorted; hidden files and folders are skipped."""
    root = Path(root)
    found = []
    for path in root.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if is_image_file(path):
            found.append(path)
    return sorted(found)


# ----------------------------------------------------------------------------------------------
# Headers (size, orientation, mode) without decoding the pixels
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageHeader:
    """Size, EXIF orientation and mode of an image file, from its header.

    ``width``/``height`` are those of the stored pixel array; ``orientation`` is the EXIF tag (1 when
    absent or invalid); ``mode`` is Pillow's (``RGB``, ``L``, ``I;16``, ...).
    """

    width: int
    height: int
    orientation: int = UPRIGHT
    format: str | None = None
    mode: str = "RGB"

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


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of ``image`` (1..8); 1 when absent, invalid or in a corrupt EXIF block."""
    try:
        value = int(image.getexif().get(ORIENTATION_TAG, UPRIGHT))
    except Exception:  # a corrupt EXIF block is not a reason to reject the pixels
        return UPRIGHT
    return value if value in VALID_ORIENTATIONS else UPRIGHT


def read_image_header(path: Path | IO[bytes]) -> ImageHeader:
    """Size, EXIF orientation and mode of ``path`` (a file or a binary stream), reading only the header.

    Raises:
        UnreadableImageError: not an image Pillow can open, or larger than its decompression-bomb limit;
            the message names the file.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            return ImageHeader(width, height, exif_orientation(image), image.format, image.mode)
    except Exception as err:  # Pillow's format plugins raise many kinds of exceptions on hostile headers
        raise UnreadableImageError(f"{_name(path)}: cannot read the image ({_reason(err)})") from None


# ----------------------------------------------------------------------------------------------
# Pixels
# ----------------------------------------------------------------------------------------------
def load_rgb_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file as an 8-bit RGB PIL image, upright according to its EXIF orientation.

    ``expected_size`` = (width, height) from an annotation file. Annotations describe the upright picture,
    so the JSON size must match it; a file whose stored (un-turned) pixels match instead is returned as
    stored (without its orientation tag), since its labels were drawn on those pixels.

    Raises:
        MissingFileError: the file does not exist.
        DataError: unreadable, truncated, too large, a mode that cannot be converted (see the module
            docstring), or a size that matches ``expected_size`` in neither orientation; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"image file not found: {path}")
    stored = _decode(path)
    image = to_upright(stored, str(path))
    if expected_size is not None and image.size != tuple(expected_size):
        if stored.size != tuple(expected_size):
            raise DataError(
                f"{path}: the image is {image.width}x{image.height} (width x height) but the annotation file says "
                f"{expected_size[0]}x{expected_size[1]}"
            )
        image = _without_orientation(stored)
    return to_rgb(image, str(path))


def load_segment_ids(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """The segment-id map int64 [H, W] of a COCO panoptic PNG (id = R + 256·G + 256²·B; 0 = void).

    ``expected_size`` = (width, height) of the image the PNG annotates.

    Raises:
        MissingFileError: the file does not exist.
        DataError: unreadable, a mode without 8-bit RGB colours (see the module docstring), or a size other than
            ``expected_size``; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"segment PNG not found: {path}")
    image = _decode(path)
    if image.mode not in SEGMENT_ID_MODES:
        raise DataError(f"{path}: a segment-id PNG must be RGB (id = R + 256*G + 256^2*B), got mode {image.mode}")
    if expected_size is not None and (mismatch := segment_size_mismatch(image.size, expected_size)):
        raise DataError(f"{path}: {mismatch}")
    if image.mode == "P":
        image = image.convert("RGB")
    return rgb2id(np.asarray(image)[..., :3])


def segment_size_mismatch(png_size: tuple[int, int], image_size: tuple[int, int]) -> str | None:
    """Why a segment PNG of ``png_size`` (width, height) cannot annotate an image of ``image_size``; None if it can."""
    if tuple(png_size) == tuple(image_size):
        return None
    return (f"the segment PNG is {png_size[0]}x{png_size[1]} (width x height) but its image is "
            f"{image_size[0]}x{image_size[1]}")


def to_upright_rgb(image: Image.Image, source: str = "image") -> Image.Image:
    """A PIL image as the loader would give it: turned upright by its EXIF tag, then 8-bit RGB (:func:`to_rgb`)."""
    return to_rgb(to_upright(image, source), source)


def to_upright(image: Image.Image, source: str = "image") -> Image.Image:
    """``image`` turned upright by its EXIF orientation (Pillow's ``exif_transpose``, which also drops the tag)."""
    if exif_orientation(image) == UPRIGHT:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception as err:
        raise DataError(f"{source}: cannot apply the EXIF orientation ({_reason(err)})") from None


def to_rgb(image: Image.Image, source: str = "image") -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB by the rules of the module docstring.

    Raises:
        DataError: naming ``source``, for pixel values or modes with no 8-bit RGB meaning.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in HIGH_BIT_DEPTH_MODES:
        gray = _high_bit_depth_to_uint8(np.asarray(image), mode, source)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "LAB":
        return _lab_to_rgb(image)
    try:
        if mode in ALPHA_MODES or "transparency" in image.info:
            return _composite_over_background(image.convert("RGBA"))
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise DataError(f"{source}: images of mode {mode} cannot be converted to RGB ({err})") from None


def describe_mode(mode: str) -> str | None:
    """How :func:`to_rgb` treats a high-bit-depth ``mode`` (for ``detr data check``); None for 8-bit modes."""
    if mode in SIXTEEN_BIT_MODES:
        return f"16-bit pixels ({mode}) are scaled to 8 bit by value x {UINT8_MAX}/{SIXTEEN_BIT_MAX}"
    if mode == "I":
        return (f"32-bit integer pixels are scaled like 16-bit ones (x {UINT8_MAX}/{SIXTEEN_BIT_MAX}); "
                f"values outside 0..{SIXTEEN_BIT_MAX} are refused when the image is loaded")
    if mode == "F":
        return (f"32-bit float pixels are scaled by x {UINT8_MAX} and must lie in [0, {FLOAT_MAX:g}]; "
                "other values, NaN and inf are refused when the image is loaded")
    return None


def _high_bit_depth_to_uint8(values: np.ndarray, mode: str, source: str) -> np.ndarray:
    """16/32-bit integer or float pixels [H, W] → uint8 [H, W] (rules in the module docstring)."""
    if mode == "F":
        finite = np.isfinite(values)
        if not finite.all():
            raise DataError(f"{source}: {int((~finite).sum())} of {values.size} pixels are NaN or infinite; "
                            "replace them with a value of your choice before using the image")
        full_scale = FLOAT_MAX
    else:
        full_scale = SIXTEEN_BIT_MAX
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if low < 0 or high > full_scale:
        kind = "32-bit float" if mode == "F" else "32-bit integer"
        raise DataError(f"{source}: {kind} pixels range from {low:g} to {high:g}, outside [0, {full_scale:g}]: "
                        "no 8-bit scale is implied; convert the image to 8 or 16 bit (or floats in [0, 1])")
    return np.rint(values.astype(np.float64) * (UINT8_MAX / full_scale)).astype(np.uint8)


def _composite_over_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, UINT8_MAX))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return ImageCms.applyTransform(image, lab_to_srgb)


def _decode(path: Path) -> Image.Image:
    """Open and decode the (first frame of the) file; every failure is an :class:`UnreadableImageError`."""
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened
    except Exception as err:  # Pillow's decoders raise OSError, SyntaxError, struct.error, ... on broken files
        raise UnreadableImageError(f"{path}: cannot read the image ({_reason(err)})") from None


def _without_orientation(image: Image.Image) -> Image.Image:
    """A copy of ``image`` whose EXIF no longer asks to be turned (so that no later step turns it)."""
    if exif_orientation(image) == UPRIGHT:
        return image
    image = image.copy()
    exif = image.getexif()
    exif.pop(ORIENTATION_TAG, None)
    image.info["exif"] = exif.tobytes()
    return image


def _name(path: Path | IO[bytes]) -> str:
    return str(path) if isinstance(path, (str, Path)) else str(getattr(path, "name", "image data"))


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (OSError, ValueError)) else f"{type(err).__name__}: {text}"
