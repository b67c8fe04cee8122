"""The one image loader (torchdetr.data.io): EXIF orientation everywhere, mode rules, errors that name the file.

Expectations are independent of the code under test: numpy rotations of the stored pixels, closed-form
ramps, alpha-compositing formulas, palette look-ups.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from torchdetr.data.coco import CocoDetection
from torchdetr.data.io import (
    ORIENTATION_TAG,
    UnreadableImageError,
    describe_mode,
    find_image_files,
    load_rgb_image,
    read_image_header,
    to_rgb,
    to_upright_rgb,
)
from torchdetr.data.transforms import make_transforms
from torchdetr.errors import DataError, MissingFileError
from torchdetr.inference.detector import Detector, to_pil_image

RAMP_8 = np.arange(256, dtype=np.uint8).reshape(16, 16)  # the 8-bit ramp every rescale below must give back
# EXIF orientation → the numpy rotation that turns the stored pixels upright (np.rot90 turns counter-clockwise)
UPRIGHT_BY_NUMPY = {6: lambda a: np.rot90(a, k=-1), 8: lambda a: np.rot90(a, k=1), 3: lambda a: np.rot90(a, k=2)}


def _exif_jpeg(path: Path, orientation: int, size: tuple[int, int] = (60, 40)) -> np.ndarray:
    """A JPEG stored ``size`` = (width, height) with an EXIF orientation tag; returns its decoded stored pixels."""
    width, height = size
    rng = np.random.default_rng(orientation)
    stored = np.zeros((height, width, 3), dtype=np.uint8)
    stored[:, : width // 2] = (230, 20, 20)  # red left half
    stored[: height // 4] = (20, 20, 230)  # blue top band
    stored[height // 2:, width // 2:] = rng.integers(0, 256, (height - height // 2, width - width // 2, 3))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as raw:  # decoded without EXIF: what the file stores
        return np.asarray(raw.convert("RGB"))


class _NoModel:
    def __call__(self, samples):  # pragma: no cover - preprocessing never runs the model
        raise AssertionError("not called")


# ------------------------------------------------------------------ EXIF: training == prediction
@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_jpeg_gives_identical_pixels_in_training_and_prediction(tmp_path, orientation):
    images = tmp_path / "images"
    images.mkdir()
    stored = _exif_jpeg(images / "phone.jpg", orientation)
    upright = UPRIGHT_BY_NUMPY[orientation](stored)
    height, width = upright.shape[:2]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "phone.jpg", "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 12], "area": 120, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}]}))

    train_image, _ = CocoDetection(images, ann)[0]
    predict_image = to_pil_image(images / "phone.jpg")
    from_pil = to_pil_image(Image.open(images / "phone.jpg"))  # a PIL image the user opened: turned too
    for image in (train_image, predict_image, from_pil):
        np.testing.assert_array_equal(np.asarray(image), upright)

    # and after pre-processing: the dataset's validation transform vs Detector.preprocess
    detector = Detector(_NoModel(), image_size=32)
    dataset = CocoDetection(images, ann, transforms=make_transforms("val", 32))
    train_tensor, _ = dataset[0]
    torch.testing.assert_close(detector.preprocess(to_pil_image(images / "phone.jpg")), train_tensor, rtol=0, atol=0)


def test_annotations_in_the_stored_frame_keep_the_stored_pixels(tmp_path):
    stored = _exif_jpeg(tmp_path / "s.jpg", 6)
    height, width = stored.shape[:2]
    image = load_rgb_image(tmp_path / "s.jpg", expected_size=(width, height))
    np.testing.assert_array_equal(np.asarray(image), stored)
    np.testing.assert_array_equal(np.asarray(to_upright_rgb(image)), stored)  # the tag is gone: never turned later
    with pytest.raises(DataError, match=r"s\.jpg.*40x60.*says 50x50"):
        load_rgb_image(tmp_path / "s.jpg", expected_size=(50, 50))


# ------------------------------------------------------------------ modes, each against a closed form
def _save(tmp_path: Path, array: np.ndarray, name: str, mode: str | None = None) -> Path:
    path = tmp_path / name
    (Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)).save(path)
    return path


def _gray(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image)
    assert image.mode == "RGB" and (pixels[..., :1] == pixels).all(), "grey in all three channels"
    return pixels[..., 0]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_ramp_maps_to_the_8_bit_ramp(tmp_path, suffix):
    path = _save(tmp_path, RAMP_8.astype(np.uint16) * 257, f"ramp16{suffix}")  # 0, 257, ..., 65535
    assert read_image_header(path).mode == "I;16"
    np.testing.assert_array_equal(_gray(load_rgb_image(path)), RAMP_8)
    full = np.arange(0, 65536, 17, dtype=np.uint16).reshape(-1, 1)  # every 17th 16-bit value
    np.testing.assert_array_equal(_gray(to_rgb(Image.fromarray(full))).ravel(),
                                  np.floor(full.ravel() / 65535 * 255 + 0.5).astype(np.uint8))


def test_big_endian_16_bit_and_32_bit_integers(tmp_path):
    big_endian = Image.fromarray((RAMP_8.astype(np.uint16) * 257).astype(">u2"))
    assert big_endian.mode == "I;16B"
    np.testing.assert_array_equal(_gray(to_rgb(big_endian)), RAMP_8)
    path = _save(tmp_path, RAMP_8.astype(np.int32) * 257, "ramp32.tif")
    assert read_image_header(path).mode == "I"
    np.testing.assert_array_equal(_gray(load_rgb_image(path)), RAMP_8)  # 0..65535 in 32 bits: as 16-bit
    for values, shown in ((np.array([[-5, 7]], np.int32), "-5 to 7"), (np.array([[0, 70000]], np.int32), "0 to 70000")):
        with pytest.raises(DataError, match=rf"bad32\.tif: 32-bit integer pixels range from {shown}"):
            load_rgb_image(_save(tmp_path, values, "bad32.tif"))


def test_float_images_in_0_1_and_refusals(tmp_path):
    path = _save(tmp_path, RAMP_8.astype(np.float32) / 255, "ramp.tif")
    assert read_image_header(path).mode == "F"
    np.testing.assert_array_equal(_gray(load_rgb_image(path)), RAMP_8)
    nan = RAMP_8.astype(np.float32) / 255
    nan[0, :3] = np.nan
    nan[1, 0] = np.inf
    with pytest.raises(DataError, match=r"nan\.tif: 4 of 256 pixels are NaN or infinite"):
        load_rgb_image(_save(tmp_path, nan, "nan.tif"))
    with pytest.raises(DataError, match=r"big\.tif: 32-bit float pixels range from 0 to 2"):
        load_rgb_image(_save(tmp_path, np.array([[0.0, 2.0]], np.float32), "big.tif"))


def test_alpha_is_composited_over_white(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    image = np.asarray(load_rgb_image(_save(tmp_path, rgba, "a.png"))).astype(np.float64)
    alpha = rgba[..., 3:] / 255
    np.testing.assert_allclose(image, rgba[..., :3] * alpha + 255 * (1 - alpha), atol=1)
    assert image[0, 0].tolist() == [255, 255, 255] and image[0, 1].tolist() == rgba[0, 1, :3].tolist()
    gray_alpha = np.stack([RAMP_8, np.full_like(RAMP_8, 128)], axis=-1)
    expected = RAMP_8 * (128 / 255) + 255 * (127 / 255)
    np.testing.assert_allclose(_gray(to_rgb(Image.fromarray(gray_alpha, "LA"))), expected, atol=1)


def test_palette_with_and_without_transparency(tmp_path):
    indices = (np.arange(12, dtype=np.uint8) % 4).reshape(3, 4)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    np.testing.assert_array_equal(np.asarray(load_rgb_image(_save_image(tmp_path, image, "p.png"))), palette[indices])
    image.info["transparency"] = 3  # index 3 is transparent: shown as the white background
    expected = palette[indices].copy()
    expected[indices == 3] = 255
    np.testing.assert_array_equal(np.asarray(load_rgb_image(_save_image(tmp_path, image, "pt.png", transparency=3))),
                                  expected)


def _save_image(tmp_path: Path, image: Image.Image, name: str, **options) -> Path:
    image.save(tmp_path / name, **options)
    return tmp_path / name


def test_cmyk_bilevel_and_lab():
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putdata([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)])  # cyan, black (K), white (no ink)
    assert np.asarray(to_rgb(cmyk)).tolist() == [[[0, 255, 255], [0, 0, 0], [255, 255, 255]]]
    bilevel = Image.fromarray(np.array([[True, False]]))
    assert bilevel.mode == "1" and np.asarray(to_rgb(bilevel)).tolist() == [[[255] * 3, [0] * 3]]
    lab = Image.new("LAB", (2, 1))
    lab.putdata([(255, 128, 128), (0, 128, 128)])  # L = 100 (white) and L = 0 (black), a = b = 0
    np.testing.assert_allclose(np.asarray(to_rgb(lab)).astype(int), [[[255] * 3, [0] * 3]], atol=2)


def test_check_describes_high_bit_depth_modes():
    assert describe_mode("RGB") is None and describe_mode("L") is None and describe_mode("P") is None
    assert "16-bit" in describe_mode("I;16") and "NaN" in describe_mode("F") and "0..65535" in describe_mode("I")


# ------------------------------------------------------------------ errors name the file
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG structure declaring ``width`` x ``height`` RGB pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _png_chunk(b"IEND", b""))


def test_unreadable_truncated_missing_and_bomb_files(tmp_path):
    with pytest.raises(MissingFileError, match=r"nowhere\.png"):
        load_rgb_image(tmp_path / "nowhere.png")
    (tmp_path / "text.jpg").write_text("not an image")
    full = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    (tmp_path / "cut.jpg").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (tmp_path / "bomb.png").write_bytes(_png_header(100_000, 100_000))  # 10^10 pixels declared in 70 bytes
    for name in ("text.jpg", "cut.jpg", "bomb.png"):
        with pytest.raises(UnreadableImageError, match=rf"^{tmp_path / name}: cannot read the image \(.+\)$") as err:
            load_rgb_image(tmp_path / name)
        assert isinstance(err.value, DataError) and "\n" not in str(err.value)
    with pytest.raises(UnreadableImageError, match="exceeds limit"):  # the header alone (detr data check)
        read_image_header(tmp_path / "bomb.png")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"RIFF"]),
       body=st.binary(max_size=200))
def test_hostile_headers_are_unreadable_images_never_crashes(tmp_path, prefix, body):
    path = tmp_path / "fuzz.img"
    path.write_bytes(prefix + body)
    for read in (read_image_header, load_rgb_image):
        try:
            read(path)
        except UnreadableImageError:
            pass


# ------------------------------------------------------------------ which files are images
def test_find_image_files_one_rule(tmp_path):
    for name in ("b.JPG", "a.png", "sub/c.tiff", "sub/d.ppm", "notes.txt", ".hidden.jpg", ".cache/e.jpg", "sub/._f.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()  # a folder with an image suffix is not an image
    assert [p.relative_to(tmp_path).as_posix() for p in find_image_files(tmp_path)] == [
        "a.png", "b.JPG", "sub/c.tiff", "sub/d.ppm"]
