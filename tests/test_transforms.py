"""Tests of torchdetr.data.transforms: the resize rule, the recipe, and box/mask invariants (hypothesis)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors
from torchvision.transforms import v2

from torchdetr.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionTransforms,
    RandomResize,
    RandomSizeCrop,
    crop,
    denormalize,
    make_transforms,
    resize,
    resize_shape,
)

SETTINGS = settings(max_examples=40, deadline=None)


# ------------------------------------------------------------------ resize rule
@pytest.mark.parametrize(
    ("height", "width", "size", "max_size", "expected"),
    [
        (480, 640, 800, 1333, (800, 1066)),  # 800 * 640 / 480 = 1066.67 → truncated
        (640, 480, 800, 1333, (1066, 800)),  # portrait
        (375, 500, 800, 1333, (800, 1066)),
        (427, 640, 800, 1333, (800, 1199)),  # 800 * 640 / 427 = 1199.06
        (800, 1200, 800, 1333, (800, 1200)),  # short side already 800: unchanged
        (500, 500, 800, None, (800, 800)),
        (100, 1000, 800, 1333, (133, 1330)),  # 10 * 800 > 1333 → size = round(133.3) = 133
        (480, 1280, 800, 1333, (500, 1333)),  # size = round(1333 * 480 / 1280) = round(499.875) = 500
        (1000, 100, 800, None, (8000, 800)),  # no max_size: long side unbounded
        (133, 1330, 800, 1333, (133, 1330)),  # reduced size equals the short side: unchanged
    ],
)
def test_resize_shape_hand_computed(height, width, size, max_size, expected):
    assert resize_shape(height, width, size, max_size) == expected


def test_resize_shape_rejects_bad_sizes():
    with pytest.raises(ValueError, match="size"):
        resize_shape(10, 10, 0, None)
    with pytest.raises(ValueError, match="height"):
        resize_shape(0, 10, 5, None)


@SETTINGS
@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 1500))
def test_resize_shape_keeps_aspect_and_short_side(height, width, size):
    out_h, out_w = resize_shape(height, width, size, None)
    assert min(out_h, out_w) == size or (out_h, out_w) == (height, width)
    # the long side is truncated: it is within one pixel of the exact aspect-preserving value
    if height <= width:
        assert 0 <= out_h * width / height - out_w < 1 + 1e-9
    else:
        assert 0 <= out_w * height / width - out_h < 1 + 1e-9


# ------------------------------------------------------------------ helpers
def _random_image(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _target(boxes: np.ndarray, height: int, width: int, masks: bool = False) -> dict:
    boxes_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes_t)
    target = {
        "boxes": boxes_t,
        "labels": torch.arange(1, n + 1, dtype=torch.int64),
        "area": (boxes_t[:, 2] - boxes_t[:, 0]) * (boxes_t[:, 3] - boxes_t[:, 1]),
        "iscrowd": torch.zeros(n, dtype=torch.int64),
        "image_id": torch.tensor([3]),
        "orig_size": torch.tensor([height, width]),
        "size": torch.tensor([height, width]),
    }
    if masks:
        m = torch.zeros((n, height, width), dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes_t.round().int().tolist()):
            m[i, y1:y2, x1:x2] = 1
        target["masks"] = m
    return target


@st.composite
def integer_boxes(draw, height: int, width: int, min_side: int = 1, max_boxes: int = 6) -> np.ndarray:
    n = draw(st.integers(0, max_boxes))
    boxes = []
    for _ in range(n):
        x1 = draw(st.integers(0, width - min_side))
        y1 = draw(st.integers(0, height - min_side))
        x2 = draw(st.integers(x1 + min_side, width))
        y2 = draw(st.integers(y1 + min_side, height))
        boxes.append([x1, y1, x2, y2])
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


def _xyxy(normalised_cxcywh: torch.Tensor, height: int, width: int) -> torch.Tensor:
    cx, cy, w, h = normalised_cxcywh.unbind(-1)
    return torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], -1)


# ------------------------------------------------------------------ validation recipe
def test_val_transform_matches_pil_resize_and_scales_target():
    height, width = 50, 70
    image = _random_image(height, width)
    boxes = np.array([[0, 0, 70, 50], [10.5, 5, 30, 45]], dtype=np.float32)
    target = _target(boxes, height, width)
    out, out_t = make_transforms("val", image_size=64)(image, target)

    # resize_shape(50, 70, 64, round(1333 * 64 / 800) = 107): 70 / 50 * 64 = 89.6 <= 107 → (64, 89)
    assert out.shape == (3, 64, 89) and out.dtype == torch.float32
    expected = np.asarray(image.resize((89, 64), PIL.Image.BILINEAR), dtype=np.float32) / 255.0
    np.testing.assert_allclose(denormalize(out).permute(1, 2, 0).numpy(), expected, atol=1e-5)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out, (torch.from_numpy(expected).permute(2, 0, 1) - mean) / std)

    sx, sy = 89 / 70, 64 / 50
    x1, y1, x2, y2 = boxes.T
    expected_boxes = np.stack(
        [(x1 + x2) / 2 * sx / 89, (y1 + y2) / 2 * sy / 64, (x2 - x1) * sx / 89, (y2 - y1) * sy / 64], 1
    )
    np.testing.assert_allclose(out_t["boxes"].numpy(), expected_boxes, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_t["area"].numpy(), target["area"].numpy() * sx * sy, rtol=1e-5)
    assert out_t["size"].tolist() == [64, 89]
    assert out_t["orig_size"].tolist() == [50, 70]
    assert out_t["labels"].tolist() == [1, 2] and out_t["image_id"].tolist() == [3]
    assert out_t["boxes"].dtype == torch.float32 and out_t["labels"].dtype == torch.int64


def test_target_none_returns_none_and_same_image():
    image = _random_image(30, 40)
    transform = make_transforms("train", image_size=48)
    torch.manual_seed(3)
    with_target, _ = transform(image, _target(np.array([[1, 2, 10, 20]]), 30, 40))
    torch.manual_seed(3)
    without, none = transform(image, None)
    assert none is None
    torch.testing.assert_close(with_target, without)


def test_tensor_and_grayscale_inputs():
    transform = make_transforms("val", image_size=32)
    tensor = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    out, _ = transform(tensor, None)
    assert out.shape == (3, 32, 48)
    gray, _ = transform(PIL.Image.new("L", (30, 20), 128), None)
    assert gray.shape == (3, 32, 48)
    torch.testing.assert_close(denormalize(gray), torch.full_like(gray, 128 / 255), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        transform(torch.zeros(1, 20, 40), None)


def test_bad_targets_are_reported():
    transform = make_transforms("val", image_size=32)
    image = _random_image(20, 20)
    with pytest.raises(ValueError, match="boxes"):
        transform(image, {"boxes": torch.zeros(2, 3), "labels": torch.zeros(2, dtype=torch.int64)})
    with pytest.raises(ValueError, match="number of objects"):
        transform(image, {"boxes": torch.zeros(2, 4), "labels": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(ValueError, match="masks"):
        transform(image, {"boxes": torch.zeros(1, 4), "masks": torch.zeros(1, 10, 10)})


def test_unknown_image_set():
    with pytest.raises(ValueError, match="'tarin'"):
        make_transforms("tarin")


@pytest.mark.parametrize("image_size", [800, 200])
def test_train_output_sizes_follow_scaled_recipe(image_size):
    factor = image_size / 800
    scales = {round(s * factor) for s in range(480, 801, 32)}
    height, width = round(480 * factor), round(640 * factor)
    image = _random_image(height, width)
    transform = make_transforms("train", image_size=image_size)
    seen = set()
    for seed in range(16):
        torch.manual_seed(seed)
        out, target = transform(image, _target(np.array([[0, 0, width, height]]), height, width))
        seen.add(min(out.shape[-2:]))
        assert target["size"].tolist() == list(out.shape[-2:])
    # 4:3 images and crops of aspect <= 600/384 never reach max_size: the short side is always a scale
    assert seen <= scales and len(seen) > 3


def test_denormalize_inverts_normalize():
    x = torch.rand(2, 3, 5, 6)
    normalised = v2.functional.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))
    torch.testing.assert_close(denormalize(normalised), x)
    with pytest.raises(ValueError):
        denormalize(torch.zeros(4, 5, 5))


# ------------------------------------------------------------------ properties
def _run(step, image, target):
    return DetectionTransforms(step)(image, target)


@SETTINGS
@given(st.data(), st.integers(8, 48), st.integers(8, 48))
def test_flip_twice_is_identity(data, height, width):
    boxes = data.draw(integer_boxes(height, width))
    image = _random_image(height, width)
    target = _target(boxes, height, width, masks=True)
    flip = v2.RandomHorizontalFlip(p=1.0)
    once_img, once = _run(flip, image, target)
    twice_img, twice = _run(v2.Compose([flip, flip]), image, target)
    same_img, same = _run(v2.Identity(), image, target)
    torch.testing.assert_close(twice_img, same_img)
    torch.testing.assert_close(twice["boxes"], same["boxes"])
    assert torch.equal(twice["masks"], same["masks"])
    # a single flip maps x1, x2 to W - x2, W - x1
    flipped = _xyxy(once["boxes"], height, width)
    expected = torch.as_tensor(boxes)[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([width, 0, width, 0])
    torch.testing.assert_close(flipped, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(once_img, same_img.flip(-1))


def _steps():
    return {
        "flip": v2.RandomHorizontalFlip(p=1.0),
        "resize": RandomResize([12, 40, 64], max_size=80),
        "crop": RandomSizeCrop(6, 40),
        "train": make_transforms("train", image_size=64).geometric,
        "val": make_transforms("val", image_size=64).geometric,
    }


@SETTINGS
@given(st.data(), st.integers(8, 96), st.integers(8, 96), st.sampled_from(sorted(_steps())), st.integers(0, 2**31))
def test_boxes_stay_inside_image(data, height, width, step_name, seed):
    boxes = data.draw(integer_boxes(height, width))
    torch.manual_seed(seed)
    image, target = _run(_steps()[step_name], _random_image(height, width), _target(boxes, height, width, masks=True))
    out_h, out_w = image.shape[-2:]
    assert target["size"].tolist() == [out_h, out_w]
    n = len(target["boxes"])
    assert len(target["labels"]) == len(target["area"]) == len(target["iscrowd"]) == n
    assert target["masks"].shape == (n, out_h, out_w) and target["masks"].dtype == torch.bool
    xyxy = _xyxy(target["boxes"], 1, 1)
    assert (xyxy >= -1e-5).all() and (xyxy <= 1 + 1e-5).all()
    assert (target["boxes"][:, 2:] > 0).all()
    assert (target["area"] > 0).all()


@SETTINGS
@given(st.data(), st.integers(4, 40), st.integers(4, 40))
def test_crop_clips_and_drops_like_direct_computation(data, height, width):
    boxes = data.draw(
        st.lists(
            st.tuples(*[st.floats(-10, 50, allow_nan=False, width=32)] * 4).map(
                lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
            ),
            max_size=8,
        )
    )
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    top = data.draw(st.integers(0, height - 1))
    left = data.draw(st.integers(0, width - 1))
    crop_h = data.draw(st.integers(1, height - top))
    crop_w = data.draw(st.integers(1, width - left))
    pixels = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    n = len(boxes)
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width)),
        "labels": torch.arange(n),
        "iscrowd": torch.zeros(n, dtype=torch.int64),
        "area": torch.ones(n),
    }
    image, out = crop(tv_tensors.Image(pixels), target, (top, left, crop_h, crop_w))

    shifted = boxes - np.array([left, top, left, top], dtype=np.float32)
    clipped = np.clip(shifted, 0, np.array([crop_w, crop_h, crop_w, crop_h], dtype=np.float32))
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    np.testing.assert_allclose(out["boxes"].numpy(), clipped[keep], atol=1e-5)
    assert out["labels"].tolist() == np.arange(n)[keep].tolist()
    np.testing.assert_allclose(
        out["area"].numpy(), ((clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]))[keep], rtol=1e-5
    )
    assert len(out["iscrowd"]) == keep.sum()
    assert out["size"].tolist() == [crop_h, crop_w]
    assert torch.equal(image, pixels[:, top : top + crop_h, left : left + crop_w])
    assert out["boxes"].canvas_size == (crop_h, crop_w)


def _mask_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@SETTINGS
@given(
    st.data(),
    st.integers(16, 64),
    st.integers(16, 64),
    st.sampled_from(["resize", "flip", "crop"]),
    st.integers(0, 2**31),
)
def test_masks_agree_with_boxes(data, height, width, step_name, seed):
    boxes = data.draw(integer_boxes(height, width, min_side=4))
    image = _random_image(height, width)
    target = _target(boxes, height, width, masks=True)
    if step_name == "resize":
        size = (data.draw(st.integers(height // 2, height * 2)), data.draw(st.integers(width // 2, width * 2)))
        step = lambda img, tgt: resize(img, tgt, size)  # noqa: E731
    else:
        step = {
            "flip": v2.RandomHorizontalFlip(p=1.0),
            "crop": RandomSizeCrop(8, 48),
        }[step_name]
    torch.manual_seed(seed)
    out_image, out = _run(step, image, target)
    out_h, out_w = out_image.shape[-2:]
    boxes_px = _xyxy(out["boxes"], out_h, out_w)
    for box, mask in zip(boxes_px, out["masks"]):
        found = _mask_box(mask)
        if found is None:  # nearest-neighbour downscaling can lose a sliver under 2 px
            assert min(box[2] - box[0], box[3] - box[1]) < 2
            continue
        assert torch.allclose(torch.tensor(found, dtype=torch.float32), box, atol=1.0 + 1e-4), (found, box)


def test_mask_resize_matches_original_nearest_rule():
    # the original: interpolate(masks[:, None].float(), size, mode="nearest")[:, 0] > 0.5
    masks = torch.rand(3, 23, 31) > 0.6
    image = _random_image(23, 31)
    target = {"boxes": torch.tensor([[0.0, 0, 31, 23]] * 3), "masks": masks}
    for size in [(40, 54), (11, 15), (23, 31), (17, 60)]:
        _, out = _run(lambda img, tgt, size=size: resize(img, tgt, size), image, target)
        expected = torch.nn.functional.interpolate(masks[:, None].float(), size, mode="nearest")[:, 0] > 0.5
        assert torch.equal(out["masks"], expected), size
