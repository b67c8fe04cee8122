"""``torchdetr.Detector``: input types, batching, threshold semantics, pixel boxes, attention maps."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from torchdetr import Detector
from torchdetr.config import DETRConfig
from torchdetr.data.transforms import make_transforms
from torchdetr.inference.detector import Detection, to_pil_image
from torchdetr.models.build import build_detector

from .tiny import TINY_MODEL

TINY = TINY_MODEL | dict(dec_layers=1, num_queries=10, num_classes=6, image_size=128, dropout=0.0)
NAMES = {1: "circle", 2: "square", 3: "triangle", 4: "cross", 5: "ring"}


def write_tiny_checkpoint(path: Path, seed: int = 0, **overrides) -> Path:
    """A random tiny DETR saved in our checkpoint layout ({"model", "args", "categories"})."""
    torch.manual_seed(seed)
    cfg = DETRConfig(**(TINY | overrides))
    model = build_detector(cfg)
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(**cfg.to_dict()), "categories": NAMES}, path)
    return path


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB image (blocks upsampled) so the model sees structure, not just noise."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((width, height), Image.BILINEAR)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth")


@pytest.fixture(scope="module")
def detector(checkpoint) -> Detector:
    return Detector.from_pretrained(checkpoint, device="cpu", threshold=0.0)


def _as_tuples(detections: list[Detection]) -> list[tuple]:
    return [(d.query, d.label, d.score, d.box) for d in detections]


def _assert_close(found: list[Detection], expected: list[Detection], tol: float = 1e-4) -> None:
    """Same queries and labels; scores and boxes equal up to float rounding (batched kernels differ slightly)."""
    assert [(d.query, d.label) for d in found] == [(d.query, d.label) for d in expected]
    for a, b in zip(found, expected):
        assert a.score == pytest.approx(b.score, abs=tol)
        assert a.box == pytest.approx(b.box, abs=tol * 100)


def test_from_pretrained_reads_names_and_image_size(detector):
    assert detector.category_names == NAMES
    assert detector.image_size == 128 and detector.max_size == round(1333 * 128 / 800)
    assert not detector.model.training


def test_a_checkpoint_trained_at_256_pixels_is_predicted_at_256_without_being_told(tmp_path):
    """The input size travels with the checkpoint (its args), as torchvision's weights carry their transforms."""
    path = write_tiny_checkpoint(tmp_path / "256.pth", image_size=256)
    detector = Detector.from_pretrained(path, "cpu")
    assert (detector.image_size, detector.max_size) == (256, round(1333 * 256 / 800))
    batch = detector.batch([random_image(100, 150)])  # 2:3 → shorter side 256, longer 384 (< 427)
    assert tuple(batch.tensors.shape[-2:]) == (256, 384)
    assert Detector.from_pretrained(path, "cpu", image_size=192).image_size == 192  # an explicit size wins


def test_synthetic_runs_at_the_default_size_predict_at_128_pixels(tmp_path):
    """``--dataset_file synthetic`` without ``--image_size`` trains on 128 px images: predict at that size."""
    path = write_tiny_checkpoint(tmp_path / "synthetic.pth", image_size=800, dataset_file="synthetic")
    assert Detector.from_pretrained(path, "cpu").image_size == 128
    assert Detector.from_pretrained(path, "cpu", image_size=256).max_size == round(1333 * 256 / 800)


def test_all_input_types_give_identical_detections(detector, tmp_path):
    image = random_image(96, 150, seed=1)
    path = tmp_path / "image.png"
    image.save(path)
    array = np.asarray(image)
    inputs = {
        "path": path,
        "str path": str(path),
        "PIL": image,
        "PIL RGBA": image.convert("RGBA"),
        "numpy uint8": array,
        "numpy float": array.astype(np.float32) / 255,
        "tensor uint8": torch.from_numpy(array.copy()).permute(2, 0, 1),
        "tensor float": torch.from_numpy(array.copy()).permute(2, 0, 1).double() / 255,
    }
    reference = _as_tuples(detector.predict(image))
    assert len(reference) == 10  # threshold 0 keeps every query
    for kind, value in inputs.items():
        assert _as_tuples(detector.predict(value)) == reference, kind
    batch = detector.predict(list(inputs.values()), batch_size=len(inputs))
    for result in batch:  # same size everywhere: no padding
        _assert_close(result, detector.predict(image))


def test_single_image_returns_a_list_of_detections_and_a_list_returns_one_per_image(detector):
    image = random_image(80, 100)
    single = detector.predict(image)
    assert isinstance(single, list) and all(isinstance(d, Detection) for d in single)
    many = detector.predict([image, image, image], batch_size=2)
    assert len(many) == 3
    for result in many:
        _assert_close(result, single)


def test_batched_with_bigger_images_matches_alone_within_tolerance(detector):
    small = random_image(90, 120, seed=2)
    bigger = [random_image(160, 128, seed=3), random_image(128, 200, seed=4)]
    alone = detector.predict(small)
    padded = detector.predict([small, *bigger], batch_size=3)[0]
    by_query = {d.query: d for d in padded}
    diag = math.hypot(small.width, small.height)
    for d in alone:
        other = by_query[d.query]
        assert abs(other.score - d.score) < 0.03
        assert max(abs(a - b) for a, b in zip(d.box, other.box)) < 0.02 * diag  # measured: ~0.01 and ~0.4 % of the diagonal


def test_threshold_keeps_queries_whose_best_real_class_probability_exceeds_it(checkpoint, detector):
    image = random_image(100, 120, seed=5)
    transform = make_transforms("val", 128)
    tensor, _ = transform(image, None)
    with torch.no_grad():
        outputs = detector.model(tensor[None])
    probs = outputs["pred_logits"][0].softmax(-1)[:, :-1]  # [Q, K] without no-object
    best, labels = probs.max(-1)
    threshold = float(best.median())
    kept = detector.predict(image, threshold=threshold)
    expected = set(torch.nonzero(best > threshold).flatten().tolist())
    assert {d.query for d in kept} == expected and kept
    assert [d.score for d in kept] == sorted((d.score for d in kept), reverse=True)
    cx, cy, w, h = outputs["pred_boxes"][0].unbind(-1)
    for d in kept:
        q = d.query
        assert d.label == int(labels[q]) and d.name == NAMES.get(d.label, str(d.label))
        assert d.score == pytest.approx(float(best[q]), abs=1e-6)
        expected_box = ((cx[q] - w[q] / 2) * 120, (cy[q] - h[q] / 2) * 100, (cx[q] + w[q] / 2) * 120, (cy[q] + h[q] / 2) * 100)
        assert d.box == pytest.approx([float(v) for v in expected_box], abs=1e-3)  # pixels of the original image
    assert Detector.from_pretrained(checkpoint, device="cpu", threshold=0.99).predict(image) == [
        d for d in detector.predict(image) if d.score > 0.99
    ]


def test_a_focal_models_detections_name_the_query_that_produced_them(tmp_path):
    """Focal models give the Q best (query, class) pairs, so one query can give several detections: each
    detection's ``query`` must be the object query itself (the decoder attention row that ``detr serve`` and
    ``detr visualize`` show for it), not its rank among the pairs, which it had been."""
    checkpoint = write_tiny_checkpoint(tmp_path / "focal.pth", seed=3, cls_loss="focal")
    saved = torch.load(checkpoint, weights_only=False)
    head = saved["model"]
    head["class_embed.weight"][2] = head["class_embed.weight"][1]  # classes 1 and 2 score alike on every query:
    head["class_embed.bias"][:] = torch.tensor([-9.0, 3.0, 3.0, -9.0, -9.0, -9.0, 0.0])  # the best queries give both
    torch.save(saved, checkpoint)
    detector = Detector.from_pretrained(checkpoint, device="cpu", threshold=0.0)
    image = random_image(100, 120, seed=5)
    tensor, _ = make_transforms("val", 128)(image, None)
    with torch.no_grad():
        outputs = detector.model(tensor[None])
    probs = outputs["pred_logits"][0, :, :-1].sigmoid()  # [Q, K]: focal scores, no "no object" class
    cx, cy, w, h = outputs["pred_boxes"][0].unbind(-1)
    kept = detector.predict(image)
    num_queries = probs.shape[0]
    assert len(kept) == num_queries  # the Q best pairs over Q x K
    expected_pairs = set(probs.flatten().topk(num_queries).indices.tolist())
    assert {d.query * probs.shape[1] + d.label for d in kept} == expected_pairs
    assert len({d.query for d in kept}) < num_queries  # some query gives two classes: rank != query somewhere
    for d in kept:
        q = d.query
        assert d.score == pytest.approx(float(probs[q, d.label]), abs=1e-6)
        expected_box = ((cx[q] - w[q] / 2) * 120, (cy[q] - h[q] / 2) * 100, (cx[q] + w[q] / 2) * 120, (cy[q] + h[q] / 2) * 100)
        assert d.box == pytest.approx([float(v) for v in expected_box], abs=1e-3)
    maps = detector.attention(image, threshold=0.0)
    assert [d.query for d in maps.detections] == [d.query for d in kept]


def test_bad_inputs_give_clear_errors(detector, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jpg"):
        detector.predict(tmp_path / "nowhere.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        detector.predict(broken)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        detector.predict(torch.rand(3, 32, 32) * 4 - 2)
    with pytest.raises(ValueError, match="shape"):
        detector.predict(torch.rand(2, 3, 32, 32))
    with pytest.raises(TypeError, match="int"):
        detector.predict(42)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        Detector.from_pretrained(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="threshold"):
        Detector(detector.model, threshold=1.5)


def test_to_pil_image_converts_grayscale_and_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.asarray(to_pil_image(gray)).shape == (3, 4, 3)
    assert np.asarray(to_pil_image(torch.zeros(1, 5, 6))).shape == (5, 6, 3)


# ---------------------------------------------------------------------------- attention
def test_attention_maps_have_the_feature_grid_shape_and_decoder_maps_sum_to_one(detector):
    image = random_image(100, 150, seed=6)  # resized to 128 x 192 → a 4 x 6 grid at stride 32
    maps = detector.attention(image)
    h, w = math.ceil(128 / 32), math.ceil(192 / 32)
    assert maps.feature_size == (h, w) and maps.stride == 32
    assert maps.input_size == (128, 192) and maps.image_size == (100, 150)
    assert maps.decoder.shape == (10, h, w)
    assert maps.encoder.shape == (h, w, h, w)
    torch.testing.assert_close(maps.decoder.sum(dim=(1, 2)), torch.ones(10))
    torch.testing.assert_close(maps.encoder.sum(dim=(2, 3)), torch.ones(h, w))
    assert maps.valid.all()
    assert _as_tuples(maps.detections) == _as_tuples(detector.predict(image))


def test_decoder_attention_equals_a_hand_computed_softmax(detector):
    """Oracle: the last decoder layer's cross-attention recomputed from its inputs and projection weights."""
    image = random_image(96, 128, seed=7)
    layer = detector.model.transformer.decoder.layers[-1].multihead_attn
    seen = {}
    handle = layer.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    try:
        maps = detector.attention(image)
    finally:
        handle.remove()
    d, heads = layer.embed_dim, layer.num_heads
    w_q, w_k = layer.in_proj_weight[:d], layer.in_proj_weight[d:2 * d]
    b_q, b_k = layer.in_proj_bias[:d], layer.in_proj_bias[d:2 * d]
    with torch.inference_mode():
        q = F.linear(seen["query"][:, 0], w_q, b_q).view(-1, heads, d // heads).transpose(0, 1)  # [heads, Q, d_h]
        k = F.linear(seen["key"][:, 0], w_k, b_k).view(-1, heads, d // heads).transpose(0, 1)  # [heads, HW, d_h]
        weights = (q @ k.transpose(1, 2) / math.sqrt(d // heads)).softmax(-1).mean(0)  # [Q, HW]
    torch.testing.assert_close(maps.decoder, weights.view(maps.decoder.shape), rtol=1e-4, atol=1e-6)


def test_attention_leaves_the_model_unchanged(detector):
    image = random_image(64, 64, seed=8)
    before = _as_tuples(detector.predict(image))
    detector.attention(image)
    assert _as_tuples(detector.predict(image)) == before
    for module in detector.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
