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

from PIL import Image

from ..data.io import to_upright_rgb
from ..errors import DataError

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
