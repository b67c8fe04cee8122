"""Attention capture by hooks (padding, DETRsegm, clean-up) and the two attention figures."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from torchdetr.config import DETRConfig
from torchdetr.inference.attention import AttentionMaps, capture_attention
from torchdetr.inference.detector import Detection
from torchdetr.models.build import build_detector
from torchdetr.structures import nested_tensor_from_tensor_list
from torchdetr.viz.attention_plots import decoder_attention_figure, default_reference_points, encoder_attention_figure

from .test_predict import TINY


def _model(**overrides):
    torch.manual_seed(0)
    return build_detector(DETRConfig(**(TINY | overrides))).eval()


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_padded_cells_get_no_decoder_attention_and_valid_cells_sum_to_one():
    model = _model()
    small, big = torch.rand(3, 64, 96), torch.rand(3, 128, 160)  # grids 2 x 3 and 4 x 5
    batch = nested_tensor_from_tensor_list([small, big])
    with torch.no_grad(), capture_attention(model) as captured:
        model(batch)
    assert captured.feature_size == (4, 5)
    decoder = captured.decoder.view(2, 10, 4, 5)
    valid = ~captured.mask  # [2, 4, 5]
    assert valid[0].sum() == 2 * 3 and valid[1].all()
    for b in range(2):
        torch.testing.assert_close(decoder[b][:, valid[b]].sum(-1), torch.ones(10))
    assert torch.all(decoder[0][:, ~valid[0]] == 0)
    encoder = captured.encoder.view(2, 20, 20)
    torch.testing.assert_close(encoder[0][:, valid[0].flatten()].sum(-1), torch.ones(20))
    assert _no_hooks(model)


def test_capture_returns_the_same_outputs_and_works_for_the_mask_model():
    model = _model(masks=True, hidden_dim=128, nheads=8)
    image = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        plain = model(image)
        with capture_attention(model) as captured:
            hooked = model(image)
    torch.testing.assert_close(hooked["pred_logits"], plain["pred_logits"])
    torch.testing.assert_close(hooked["pred_masks"], plain["pred_masks"])
    assert captured.decoder.shape == (1, 10, 3 * 2)
    assert _no_hooks(model)


def test_hooks_are_removed_on_error():
    model = _model()
    with pytest.raises(RuntimeError, match="boom"), capture_attention(model):
        raise RuntimeError("boom")
    assert _no_hooks(model)
    with pytest.raises(ValueError, match="not a DETR"):
        with capture_attention(torch.nn.Linear(2, 2)):
            pass


def test_model_without_encoder_layers_has_no_encoder_map():
    model = _model(enc_layers=0)
    with torch.no_grad(), capture_attention(model) as captured:
        model(torch.rand(1, 3, 64, 64))
    assert captured.encoder is None and captured.decoder.shape == (1, 10, 4)


def _maps(image_size=(480, 640), input_size=(128, 170), grid=(4, 6), detections=()) -> AttentionMaps:
    h, w = grid
    torch.manual_seed(0)
    encoder = torch.rand(h, w, h, w)
    encoder = encoder / encoder.sum(dim=(2, 3), keepdim=True)
    decoder = torch.rand(10, h, w)
    return AttentionMaps(encoder=encoder, decoder=decoder / decoder.sum(dim=(1, 2), keepdim=True),
                         valid=torch.ones(h, w, dtype=torch.bool), input_size=input_size, image_size=image_size,
                         detections=list(detections))


def test_feature_cell_maps_image_pixels_to_stride_32_cells():
    maps = _maps()  # a 640 x 480 image seen at 170 x 128: 4 x 6 cells of 32 px of the resized image
    assert maps.stride == 32
    assert maps.feature_cell(0, 0) == (0, 0)
    assert maps.feature_cell(639, 479) == (3, 5)
    scale = 640 / 170
    assert maps.feature_cell(32 * scale - 0.5, 0) == (0, 0)
    assert maps.feature_cell(32 * scale + 0.5, 32 * (480 / 128) + 0.5) == (1, 1)
    with pytest.raises(ValueError, match="outside"):
        maps.feature_cell(640, 10)
    torch.testing.assert_close(maps.encoder_map(100, 200, "from"), maps.encoder[1, 0])
    torch.testing.assert_close(maps.encoder_map(100, 200, "to"), maps.encoder[:, :, 1, 0])
    with pytest.raises(ValueError, match="direction"):
        maps.encoder_map(1, 1, "sideways")


def _figure_pixels(fig) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_decoder_figure_has_a_map_and_an_image_per_detection():
    dets = [Detection((100, 50, 300, 400), 0.9, 1, "circle", 3), Detection((400, 10, 600, 200), 0.8, 2, "square", 7)]
    image = Image.new("RGB", (640, 480), (200, 30, 30))
    fig = decoder_attention_figure(image, _maps(detections=dets))
    axes = fig.axes
    assert len(axes) == 4
    assert axes[1].get_title() == "circle 0.90" and "query 3" in axes[0].get_title()
    np.testing.assert_allclose(axes[0].get_images()[0].get_array(), _maps().decoder[3].numpy())
    assert axes[1].patches[0].get_width() == pytest.approx(200)
    # on the 4 x 6 grid (640 px → 170 px → cells of 32): x1 = 100 px is at 100 · 170/640 / 32 − 0.5 grid units
    grid_box = axes[0].patches[0]
    assert grid_box.get_x() == pytest.approx(100 * 170 / 640 / 32 - 0.5)
    assert grid_box.get_height() == pytest.approx(350 * 128 / 480 / 32)
    assert axes[0].get_xlim() == pytest.approx((-0.5, 5.5)) and axes[0].get_ylim() == pytest.approx((3.5, -0.5))
    assert _figure_pixels(fig).std() > 10
    empty = decoder_attention_figure(image, _maps())
    assert len(empty.axes) == 1 and "no detections" in empty.axes[0].get_title()


def test_encoder_figure_has_the_image_and_one_map_per_point():
    image = Image.new("RGB", (640, 480), (30, 30, 200))
    maps = _maps()
    points = default_reference_points(maps)
    assert points == [(160, 120), (480, 120), (160, 360), (480, 360)]  # quarter points without detections
    fig = encoder_attention_figure(image, maps, points)
    assert len(fig.axes) == 5
    row, col = maps.feature_cell(*points[1])
    np.testing.assert_allclose(fig.axes[2].get_images()[0].get_array(), maps.encoder[:, :, row, col].numpy())
    det = Detection((100, 100, 300, 200), 0.9, 1, "circle", 0)
    assert default_reference_points(_maps(detections=[det])) == [(200, 150)]
    assert len(encoder_attention_figure(image, maps, points[:3]).axes) == 4
    with pytest.raises(ValueError, match="reference point"):
        encoder_attention_figure(image, maps, [])
