"""An uploaded body → an upright 8-bit RGB picture, refusing what should not be decoded.

Two steps, so that a hostile upload costs nothing: ``inspect_upload`` reads the header only (format,
size, mode) and refuses non-images (415) and images over the pixel limit (413: a decompression bomb
such as a small PNG declaring 40000 × 40000 pixels is refused here, without decoding); ``decode_upload``
then decodes the pixels (truncated data → 422) and converts them with the data layer's one image
loader rules (EXIF orientation applied; CMYK, 16-bit, palette, alpha and grayscale → RGB; a mode with
no RGB meaning → 422).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

try:
    from ..data.io import to_upright_rgb  # the one image loader (EXIF orientation, modes → RGB)
except ImportError:  # TEMPORARY: until data/io.py is merged; the same rules for the modes the server meets
    _SIXTEEN_BIT_SCALE = 255 / 65535

    def to_upright_rgb(image: Image.Image, source: str = "image") -> Image.Image:
        """Upright (EXIF) 8-bit RGB: 16-bit x 255/65535, alpha over white, palette/CMYK/grey by Pillow."""
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            values = np.asarray(image).astype(np.float64)
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise DataError(f"{source}: 32-bit integer pixels outside 0..65535 have no 8-bit scale")
            return Image.fromarray(np.rint(values * _SIXTEEN_BIT_SCALE).astype(np.uint8), mode="L").convert("RGB")
        if image.mode == "F":
            raise DataError(f"{source}: images of mode F (32-bit float) are not supported")
        if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        try:
            return image.convert("RGB")
        except (ValueError, OSError) as err:
            raise DataError(f"{source}: images of mode {image.mode} cannot be converted to RGB ({err})") from None

UNSUPPORTED_MEDIA_TYPE = 415
UNPROCESSABLE = 422
PAYLOAD_TOO_LARGE = 413


class UploadError(Exception):
    """An upload refused with an HTTP status and a one-line reason."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True)
class InspectedUpload:
    """An upload whose header was read: ``width`` × ``height`` as stored, Pillow ``format`` and ``mode``."""

    data: bytes
    width: int
    height: int
    format: str | None
    mode: str


def inspect_upload(data: bytes, max_pixels: int) -> InspectedUpload:
    """Read the header of ``data``: 422 when empty, 415 when not an image, 413 when over ``max_pixels``."""
    if not data:
        raise UploadError(UNPROCESSABLE, "the request holds no image data (empty body or empty file)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, image_format, mode = image.width, image.height, image.format, image.mode
    except Image.DecompressionBombError as err:
        raise UploadError(PAYLOAD_TOO_LARGE, f"image too large to decode safely ({err})") from None
    except Exception as err:  # Pillow raises many kinds of exceptions on hostile headers
        raise UploadError(UNSUPPORTED_MEDIA_TYPE, f"not an image Pillow can read ({_reason(err)})") from None
    if width * height > max_pixels:
        raise UploadError(PAYLOAD_TOO_LARGE, f"image of {width} x {height} = {width * height:,} pixels is over the limit "
                                             f"of {max_pixels:,} pixels (--max_pixels)")
    return InspectedUpload(data, width, height, image_format, mode)


def decode_upload(upload: InspectedUpload) -> Image.Image:
    """Decode the pixels (422 when truncated or not convertible) → upright 8-bit RGB image."""
    name = f"uploaded {upload.format or 'image'}"
    try:
        with Image.open(io.BytesIO(upload.data)) as image:
            image.load()
            return to_upright_rgb(image, name)
    except DataError as err:
        raise UploadError(UNPROCESSABLE, str(err)) from None
    except Exception as err:  # truncated or corrupt pixel data
        raise UploadError(UNPROCESSABLE, f"{name}: cannot decode the image ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (OSError, ValueError)) else f"{type(err).__name__}: {text}"
