"""The conversion of ``benchmarks/hf_detr.py``: transformers' DETR holding torchdetr's weights computes its outputs.

transformers' ``DetrForObjectDetection`` is an independent implementation of DETR; the tests that
need it (the ``bench`` extra, which CI does not install) are skipped without it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny import tiny_config
from torchdetr.errors import MissingExtraError
from torchdetr.losses.build import build_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_detr.py"
SIZES = ((160, 192), (128, 176))  # the second image is padded; small enough for 4.x transformers' learned encoding
TOLERANCE = 1e-4


def _load_script():
    spec = importlib.util.spec_from_file_location("hf_detr", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hf_detr", module)
    spec.loader.exec_module(module)
    return module


hf_detr = _load_script()


@pytest.fixture(scope="module")
def transformers():
    pytest.importorskip("timm")
    return pytest.importorskip("transformers")


def _converted(**overrides):
    cfg = tiny_config(backbone_norm="frozen", dropout=0.0, **overrides)
    torch.manual_seed(0)
    model, _, _ = build_model(cfg)
    hf_detr.randomize_constant_tensors_(model)
    model.eval()
    return model, hf_detr.to_transformers(model, cfg.model)


@pytest.mark.parametrize("overrides", [{}, {"position_embedding": "learned"},
                                       {"backbone": "resnet50", "dilation": True, "num_classes": 7}],
                         ids=["sine", "learned", "r50-dc5"])
def test_transformers_computes_torchdetr_outputs(transformers, overrides):
    model, hf_model = _converted(**overrides)
    samples = hf_detr.check_batch(SIZES)
    assert samples.mask.any(), "the check batch must contain padding"
    with torch.inference_mode():
        ours = model(samples)
        theirs = hf_detr.hf_runner(hf_model)(samples)
    for key in ("pred_logits", "pred_boxes"):
        assert theirs[key].shape == ours[key].shape
        assert (theirs[key] - ours[key]).abs().max() <= TOLERANCE, key
    assert max(hf_detr.check_conversion(model, hf_model, samples)) <= TOLERANCE


@pytest.mark.parametrize(("first", "second"), [
    ("model.decoder.layers.0.self_attn_layer_norm.weight", "model.decoder.layers.0.final_layer_norm.weight"),
    ("model.decoder.layers.1.encoder_attn.q_proj.weight", "model.decoder.layers.1.encoder_attn.k_proj.weight"),
    ("model.backbone.model.layer1.0.bn1.running_mean", "model.backbone.model.layer1.0.bn2.running_mean"),
], ids=["norms", "q-k", "batch-norm-means"])
def test_a_misplaced_tensor_is_caught(transformers, first, second):
    """The check can fail: two same-shaped tensors swapped (randomised, so no two are equal) change the outputs."""
    model, hf_model = _converted()
    state = hf_model.state_dict()
    if first not in state:  # transformers 4.x: its earlier names
        first, second = (next(iter(hf_detr.in_earlier_layout({name: None}))) for name in (first, second))
    with torch.no_grad():
        saved = state[first].clone()
        state[first].copy_(state[second])
        state[second].copy_(saved)
    with pytest.raises(hf_detr.ConversionError, match="does not compute the original's outputs"):
        hf_detr.check_conversion(model, hf_model, hf_detr.check_batch(SIZES))


def test_packed_projections_are_split_in_query_key_value_order():
    """nn.MultiheadAttention's in_proj_weight [3C, C] is [W_q; W_k; W_v] (PyTorch's layout): each third goes to its projection."""
    weight, bias = torch.arange(12.0).reshape(6, 2), torch.arange(6.0)
    prefix = "transformer.decoder.layers.0.multihead_attn."
    converted = hf_detr.hf_state_dict({prefix + "in_proj_weight": weight, prefix + "in_proj_bias": bias,
                                       prefix + "out_proj.weight": weight[:2]})
    target = "model.decoder.layers.0.encoder_attn."
    for index, projection in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(converted[f"{target}{projection}.weight"], weight[2 * index:2 * index + 2])
        assert torch.equal(converted[f"{target}{projection}.bias"], bias[2 * index:2 * index + 2])
    assert torch.equal(converted[target + "o_proj.weight"], weight[:2])


def test_an_entry_without_a_place_is_refused():
    with pytest.raises(hf_detr.ConversionError, match="bbox_attention"):
        hf_detr.hf_state_dict({"bbox_attention.q_linear.weight": torch.zeros(2, 2)})
    with pytest.raises(hf_detr.ConversionError, match="linear3"):
        hf_detr.hf_state_dict({"transformer.encoder.layers.0.linear3.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"pre_norm": True}, "post-norm"), ({"masks": True, "hidden_dim": 128, "nheads": 8}, "mask head"),
    ({"variant": "dab"}, "variant dab"), ({"dilation": True}, "dilates resnet18"),
    ({"backbone_norm": "group"}, "group"),
])
def test_architectures_transformers_cannot_hold_are_refused(overrides, message):
    with pytest.raises(hf_detr.ConversionError, match=message):
        hf_detr.check_convertible(tiny_config(**overrides).model)


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # ``import transformers`` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'torchdetr\[bench\]'"):
        hf_detr.import_transformers()
