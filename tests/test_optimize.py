"""The fast inference paths (``torchdetr.optimize``) against the faithful model and the original's outputs.

Oracles: the faithful model itself (fp32 within ``FP32_TOLERANCE`` on well-conditioned tiny models);
on the original's chaotic oracle fixtures, the model computed in float64 (the fast path must be as
close to it as the faithful float32 path is); for bf16, the stated tolerance and the rule that a
query whose class decision has a clear margin keeps its class.
"""

from __future__ import annotations

import copy

import pytest
import torch

import torchdetr
from torchdetr.errors import ConfigError
from torchdetr.inference.fast_attention import FastAttention
from torchdetr.inference.fast_backbone import FusedConv, FusedResNetBody
from torchdetr.inference.optimize import OptimizedModel, iter_fast_modules, optimize
from torchdetr.models.build import build_detector
from torchdetr.structures import NestedTensor, nested_tensor_from_tensor_list

from .test_oracle import FIXTURES, oracle_case
from .tiny import tiny_config

FP32_TOLERANCE = 1e-4  # the bound for the fast fp32 path
BF16_LOGIT_TOLERANCE = 0.25  # bfloat16 keeps 8 bits of mantissa: ~0.4 % per operation; logits of magnitude ~5-10
BF16_BOX_TOLERANCE = 0.02  # boxes in [0, 1]
FLOAT64_ERROR_FACTOR = 3  # the fast path's float32 rounding may be this much larger than the faithful path's
OUTPUTS = ("pred_logits", "pred_boxes")
CONFIDENT_HEAD_SCALE = 8.0


def _tiny_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector(tiny_config(**overrides)).eval()


def _images(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 96, 128, generator=generator), torch.randn(3, 80, 112, generator=generator)]


def _max_difference(a: dict, b: dict, name: str) -> float:
    return float((a[name].float() - b[name].float()).abs().max())


@pytest.mark.parametrize("overrides", [
    {},
    {"dilation": True, "pre_norm": True, "position_embedding": "learned"},
    {"masks": True, "hidden_dim": 128, "nheads": 8, "dim_feedforward": 128},
    {"variant": "dab"},
], ids=["detr", "dc5-prenorm-learned", "masks", "dab"])
def test_fp32_matches_the_faithful_model(overrides):
    model = _tiny_model(**overrides)
    samples = nested_tensor_from_tensor_list(_images())  # two sizes: padded
    with torch.no_grad():
        expected = model(samples)
    fast = optimize(model, "fp32")
    got = fast(samples)
    assert set(got) == set(expected)
    for name in OUTPUTS:
        assert got[name].dtype == torch.float32
        assert _max_difference(got, expected, name) <= FP32_TOLERANCE, name
    for layer_got, layer_expected in zip(got.get("aux_outputs", []), expected.get("aux_outputs", [])):
        for name in OUTPUTS:
            assert _max_difference(layer_got, layer_expected, name) <= FP32_TOLERANCE
    if "pred_masks" in expected:
        assert _max_difference(got, expected, "pred_masks") <= FP32_TOLERANCE * expected["pred_masks"].abs().max()
    kinds = {type(m) for m in iter_fast_modules(fast)}
    assert FastAttention in kinds and FusedResNetBody in kinds  # the fast modules did run


def test_inputs_as_list_tensor_and_nested_tensor_agree():
    model = _tiny_model()
    fast = optimize(model)
    images = torch.stack([_images()[0], _images(1)[0]])
    from_tensor = fast(images)
    from_list = fast(list(images))
    from_nested = fast(NestedTensor(images, torch.zeros(2, *images.shape[-2:], dtype=torch.bool)))
    for name in OUTPUTS:
        assert torch.equal(from_tensor[name], from_list[name])
        assert torch.equal(from_tensor[name], from_nested[name])
    second = fast(images)  # the cached position encoding gives the same result
    assert torch.equal(second["pred_logits"], from_tensor["pred_logits"])


@pytest.mark.parametrize("name", [f for f in FIXTURES if "dc5" not in f])  # dc5: 40 s in float64; covered tiny above
def test_fast_path_rounds_like_the_faithful_path_on_the_original_fixtures(name, oracle_dir):
    """The oracle models are chaotic (one ulp moves logits by ~6e-5): compare both float32 paths with float64."""
    model, _, postprocessors, fixture, outputs = oracle_case(name, oracle_dir)
    inputs = fixture["inputs"]
    samples = NestedTensor(inputs["tensors_fp16"].float(), inputs["mask"])
    fast = optimize(model, "fp32")(samples)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(NestedTensor(inputs["tensors_fp16"].double(), inputs["mask"]))
    for key in OUTPUTS:
        faithful_error = (outputs[key].double() - exact[key]).abs()
        fast_error = (fast[key].double() - exact[key]).abs()
        assert fast_error.max() <= FLOAT64_ERROR_FACTOR * faithful_error.max() + 1e-6, key
        assert fast_error.median() <= FLOAT64_ERROR_FACTOR * faithful_error.median() + 1e-6, key
        assert fast[key].sub(fixture["outputs"][key]).abs().max() < 0.05  # the original's own outputs
    sizes = torch.stack([t["orig_size"] for t in fixture["targets"]])
    for ours, theirs in zip(postprocessors["bbox"](fast, sizes), fixture["postprocess"]["bbox"]):
        assert torch.equal(ours["labels"], theirs["labels"])


def _clear_decisions(logits: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels [N], mask [N]) of the queries whose top class leads the second by more than ``margin``."""
    top2 = logits.flatten(0, -2).topk(2, dim=-1)
    return top2.indices[:, 0], (top2.values[:, 0] - top2.values[:, 1]) > margin


def test_bf16_within_stated_tolerance_and_decisions_agree():
    model = _tiny_model()
    with torch.no_grad():  # a confident model (random heads give near-uniform logits): some clear decisions
        model.class_embed.weight.mul_(CONFIDENT_HEAD_SCALE)
    samples = nested_tensor_from_tensor_list(_images())
    with torch.no_grad():
        expected = model(samples)
    got = optimize(model, "bf16")(samples)
    assert got["pred_logits"].dtype == torch.float32
    assert _max_difference(got, expected, "pred_logits") <= BF16_LOGIT_TOLERANCE
    assert _max_difference(got, expected, "pred_boxes") <= BF16_BOX_TOLERANCE
    labels, clear = _clear_decisions(expected["pred_logits"], 2 * BF16_LOGIT_TOLERANCE)
    assert clear.any()
    bf16_labels = got["pred_logits"].flatten(0, -2).argmax(-1)
    assert torch.equal(bf16_labels[clear], labels[clear])


def test_the_model_is_left_unchanged_and_weights_are_shared():
    model = _tiny_model()
    model.train()
    modules = [type(m) for m in model.modules()]
    keys = list(model.state_dict())
    fast = optimize(model, "fp32")
    assert [type(m) for m in model.modules()] == modules
    assert model.training and not fast.fast.training
    assert list(fast.state_dict()) == keys
    assert fast.num_classes == model.num_classes and fast.num_queries == model.num_queries
    model.eval()
    samples = _images()
    with torch.no_grad():  # a weight changed in place (an optimiser step): the folded weights follow
        model.backbone[0].body.layer1[0].conv1.weight.mul_(1.5)
        model.transformer.encoder.layers[0].self_attn.in_proj_weight.mul_(0.5)
        expected = model(samples)
    got = fast(samples)
    for name in OUTPUTS:
        assert _max_difference(got, expected, name) <= FP32_TOLERANCE
    assert optimize(fast, "bf16").faithful is model  # an optimized model is optimized from its model


def test_public_entry_point_and_user_errors():
    model = _tiny_model()
    assert torchdetr.optimize is optimize
    assert optimize(model, "faithful") is model
    assert isinstance(optimize(model, "fp32"), OptimizedModel)
    with pytest.raises(ConfigError, match="precision"):
        optimize(model, "fp8")
    with pytest.raises(ConfigError, match="CUDA"):
        optimize(model, "fp16")
    with pytest.raises(ConfigError, match="compile"):
        optimize(model, "faithful", compile=True)


# ---------------------------------------------------------------- the fast paths in Detector, predict and eval
def test_detector_and_predict_with_precision_agree_with_faithful(tmp_path):
    import json

    from torchdetr import Detector
    from torchdetr.cli import main
    from torchdetr.data.synthetic import write_coco_folder

    from .test_predict import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth")
    data = write_coco_folder(tmp_path / "data", num_train=1, num_val=2, seed=0)
    images = sorted(str(p) for p in (data / "images").glob("val_*.png"))
    faithful = Detector.from_pretrained(checkpoint, "cpu", threshold=0, image_size=128).predict(images)
    fast = Detector.from_pretrained(checkpoint, "cpu", threshold=0, image_size=128, precision="fp32")
    assert isinstance(fast.model, OptimizedModel) and fast.precision == "fp32"
    for ours, theirs in zip(fast.predict(images), faithful):
        by_query = {d.query: d for d in theirs}
        for detection in ours:
            assert detection.label == by_query[detection.query].label
            assert detection.score == pytest.approx(by_query[detection.query].score, abs=FP32_TOLERANCE)
            assert detection.box == pytest.approx(by_query[detection.query].box, abs=1e-2)  # pixels
    maps = fast.attention(images[0])  # from the faithful model: the fused attention has no weights
    assert torch.allclose(maps.decoder.flatten(1)[:, maps.valid.flatten()].sum(1), torch.ones(1), atol=1e-4)

    runs = {}
    for precision in ("faithful", "fp32", "bf16"):
        out = tmp_path / precision
        assert main(["predict", *images, "--model", str(checkpoint), "--output", str(out), "--threshold", "0",
                     "--no_render", "--device", "cpu", "--image_size", "128", "--precision", precision]) == 0
        runs[precision] = sorted(json.loads((out / "predictions.json").read_text()),
                                 key=lambda r: (r["image_id"], r["bbox"]))
    for precision, tolerance in (("fp32", 2e-4), ("bf16", 0.05)):
        assert len(runs[precision]) == len(runs["faithful"])
        scores = sorted(r["score"] for r in runs[precision])
        assert scores == pytest.approx(sorted(r["score"] for r in runs["faithful"]), abs=tolerance)
    with pytest.raises(ConfigError, match="exported"):
        Detector(lambda samples: {}, precision="fp32")


def test_eval_with_precision_gives_the_faithful_losses(tmp_path, capsys):
    from torchdetr.cli import build_parser, main
    from torchdetr.cli.evaluate import config_for_model_evaluation
    from torchdetr.engine.evaluate import evaluate_model

    from .test_predict import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth", num_classes=6)
    flags = ["eval", "--model", str(checkpoint), "--dataset_file", "synthetic", "--num_val", "3", "--image_size", "64",
             "--num_workers", "0", "--device", "cpu"]
    cfg = config_for_model_evaluation(build_parser("eval").parse_args(flags))
    faithful = evaluate_model(cfg).result
    fast = evaluate_model(cfg, run_as=lambda model: optimize(model, "fp32")).result
    assert faithful.loss_stats.keys() == fast.loss_stats.keys()
    for name, value in faithful.loss_stats.items():
        assert fast.loss_stats[name] == pytest.approx(value, abs=1e-4), name
    capsys.readouterr()
    assert main([*flags, "--precision", "bf16"]) == 0 and "AP50" in capsys.readouterr().out
    assert main(["eval", "--ann", "a.json", "--results", "b.json", "--precision", "fp32"]) == 2


def test_weights_packed_per_input_shape_give_the_faithful_outputs_at_every_size():
    """Weights are packed for each input shape (kept for the last few): cycling through more sizes than are
    kept, each batch still matches the faithful model, and the cache never holds more than its bound."""
    model = _tiny_model()
    fast = optimize(model, "fp32")
    generator = torch.Generator().manual_seed(3)
    sizes = [(96, 128), (64, 96), (112, 80), (96, 128), (64, 96)]
    for height, width in sizes:
        images = torch.randn(2, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(images)
        got = fast(images)
        for name in OUTPUTS:
            assert _max_difference(got, expected, name) <= FP32_TOLERANCE, (height, width, name)
    body = next(m for m in iter_fast_modules(fast) if isinstance(m, FusedResNetBody))
    convs = [conv for conv in body.modules() if isinstance(conv, FusedConv)]
    bound = convs[0]._derived._max_entries
    assert bound < len(set(sizes))
    assert all(1 <= len(conv._derived._cache) <= bound for conv in convs)
