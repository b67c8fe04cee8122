"""Fidelity: the original implementation's outputs, losses and post-processing, reproduced.

Expected values come from ../shared/reference/oracle (produced by facebookresearch/detr); the
checkpoints are rebuilt in the official format and loaded through our loader with strict=True.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from torchdetr import DETRConfig, NestedTensor, build_model, load_checkpoint
from torchdetr.engine.checkpoint import checkpoint_args, load_model_state
from torchdetr.models.build import coco_panoptic_is_thing_map
from torchdetr.models.postprocess import PostProcessPanoptic, rgb2id

from .conftest import rebuild_oracle_checkpoint

FIXTURES = ["tiny_r18_postnorm_sine", "tiny_r50_prenorm_learned_dc5", "tiny_r50_panoptic"]
ATOL = 1e-5
BOX_PIXEL_ATOL = 1e-3
# Model-output tolerance per fixture. oneDNN's convolution kernels choose their reduction blocking
# from the CPU (cache sizes, ISA) and the thread count: on this AMD EPYC (AVX-512, no AMX) the
# resnet18 fixture is reproduced bit for bit with 2 threads but differs by 1.6e-4 with 1 thread,
# and the resnet50 ones differ from the oracle by up to 8e-5 on logits of magnitude ~20. These
# random-weight models are chaotic: a relative 1e-7 (one float32 ulp) perturbation of input_proj's
# weights alone moves the logits by 5.7e-5 (measured), so 2e-4 is "the same computation up to float
# rounding", while any real difference (a missing norm, a wrong scale, a transposed embedding) moves
# them by > 1e-1. The median difference must still be within 1e-5 (see assert_same_outputs). The
# forward pass runs with ORACLE_THREADS threads (CI's 2 cores); with 1 thread oneDNN takes another
# kernel path whose results differ from the oracle by ~5e-4 (median) on the resnet50 fixtures —
# while staying exactly as close to the float64 computation as the oracle is, which
# test_oracle_outputs_are_float32_roundings_of_our_float64_model checks on any machine.
OUTPUT_ATOL = {"tiny_r18_postnorm_sine": 1e-5, "tiny_r50_prenorm_learned_dc5": 2e-4, "tiny_r50_panoptic": 2e-4}

ORACLE_THREADS = 2
_CACHE: dict[str, tuple] = {}


def oracle_case(name: str, out_dir):
    """(model, criterion, postprocessors, fixture, outputs) for one fixture, computed once."""
    if name not in _CACHE:
        path, fixture = rebuild_oracle_checkpoint(name, out_dir)
        checkpoint = load_checkpoint(path)
        args = checkpoint_args(checkpoint)
        known = set(DETRConfig.__dataclass_fields__)
        cfg = DETRConfig(**{k: v for k, v in args.items() if k in known and k != "device"},
                         num_classes=fixture["num_classes"])
        model, criterion, postprocessors = build_model(cfg)
        load_model_state(model, checkpoint["model"], strict=True)
        assert list(model.state_dict()) == fixture["state_dict_keys"]
        model.eval()
        inputs = fixture["inputs"]
        samples = NestedTensor(inputs["tensors_fp16"].float(), inputs["mask"])
        threads = torch.get_num_threads()
        torch.set_num_threads(ORACLE_THREADS)
        try:
            with torch.no_grad():
                outputs = model(samples)
        finally:
            torch.set_num_threads(threads)
        _CACHE[name] = (model, criterion, postprocessors, fixture, outputs)
    return _CACHE[name]


def assert_close(actual, expected, atol=ATOL, what=""):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda m: f"{what}: {m}")


def assert_same_outputs(actual: dict, expected: dict, what: str, atol: float = ATOL) -> None:
    assert set(actual) == set(expected), f"{what}: output keys {sorted(actual)} != {sorted(expected)}"
    # rounding moves a few outputs by up to atol; the typical output must still agree to 1e-5
    typical = (actual["pred_logits"] - expected["pred_logits"]).abs().median().item()
    assert typical <= ATOL, f"{what}: median |logit difference| {typical:.2e} > {ATOL}"
    assert_close(actual["pred_logits"], expected["pred_logits"], atol=atol, what=f"{what} pred_logits")
    assert_close(actual["pred_boxes"], expected["pred_boxes"], atol=atol, what=f"{what} pred_boxes")
    assert len(actual["aux_outputs"]) == len(expected["aux_outputs"])
    for i, (a, e) in enumerate(zip(actual["aux_outputs"], expected["aux_outputs"])):
        assert_close(a["pred_logits"], e["pred_logits"], atol=atol, what=f"{what} aux {i} logits")
        assert_close(a["pred_boxes"], e["pred_boxes"], atol=atol, what=f"{what} aux {i} boxes")
    if "pred_masks" in expected:
        assert_close(actual["pred_masks"], expected["pred_masks"], atol=atol, what=f"{what} pred_masks")


def assert_same_indices(actual, expected, what: str) -> None:
    assert len(actual) == len(expected)
    for (ai, aj), (ei, ej) in zip(actual, expected):
        assert torch.equal(ai, ei) and torch.equal(aj, ej), f"{what}: {ai},{aj} != {ei},{ej}"


def assert_same_losses(criterion, outputs, fixture_part, targets, what: str) -> None:
    losses = criterion(outputs, targets)
    expected = fixture_part["losses"]
    assert list(losses) == list(expected), f"{what}: loss names/order differ"
    for k in expected:
        assert_close(losses[k], expected[k], what=f"{what} {k}")
    assert criterion.weight_dict == fixture_part["weight_dict"]
    assert_close(criterion.weighted_total(losses), fixture_part["loss_total"], what=f"{what} total")
    indices = criterion.matcher({k: v for k, v in outputs.items() if k != "aux_outputs"}, targets)
    assert_same_indices(indices, fixture_part["indices"], f"{what} indices")
    for aux, exp in zip(outputs["aux_outputs"], fixture_part["aux_indices"]):
        assert_same_indices(criterion.matcher(aux, targets), exp, f"{what} aux indices")


def assert_same_bbox(results, expected, what: str) -> None:
    for r, e in zip(results, expected):
        assert_close(r["scores"], e["scores"], what=f"{what} scores")
        assert torch.equal(r["labels"], e["labels"]), what
        assert_close(r["boxes"], e["boxes"], atol=BOX_PIXEL_ATOL, what=f"{what} boxes")


@pytest.mark.parametrize("name", FIXTURES)
def test_model_outputs_match_original(name, oracle_dir):
    _, _, _, fixture, outputs = oracle_case(name, oracle_dir)
    assert_same_outputs(outputs, fixture["outputs"], name, atol=OUTPUT_ATOL[name])


@pytest.mark.parametrize("name", FIXTURES)
def test_oracle_outputs_are_float32_roundings_of_our_float64_model(name, oracle_dir):
    """Machine-independent: the original's float32 outputs are as close to our model computed in
    float64 as our own float32 outputs are (rounding), while any real difference would be >> 1e-2."""
    import copy

    model, _, _, fixture, outputs = oracle_case(name, oracle_dir)
    inputs = fixture["inputs"]
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(NestedTensor(inputs["tensors_fp16"].double(), inputs["mask"]))
    truth = exact["pred_logits"]
    ours = (outputs["pred_logits"].double() - truth).abs()
    oracle = (fixture["outputs"]["pred_logits"].double() - truth).abs()
    assert oracle.max() <= 2 * ours.max() + 1e-6, f"{name}: oracle {oracle.max():.2e} vs rounding {ours.max():.2e}"
    assert oracle.median() <= 2 * ours.median() + 1e-6, f"{name}: median {oracle.median():.2e} vs {ours.median():.2e}"
    if "pred_masks" in exact:
        masks = (fixture["outputs"]["pred_masks"].double() - exact["pred_masks"]).abs().max()
        assert masks <= 2 * (outputs["pred_masks"].double() - exact["pred_masks"]).abs().max() + 1e-6


@pytest.mark.parametrize("name", FIXTURES)
def test_losses_and_matching_match_original(name, oracle_dir):
    """Criterion on the outputs the original produced (independent of convolution rounding)."""
    _, criterion, _, fixture, _ = oracle_case(name, oracle_dir)
    assert_same_losses(criterion, fixture["outputs"], fixture, fixture["targets"], name)


@pytest.mark.parametrize("name", FIXTURES)
def test_losses_on_our_outputs_match_original(name, oracle_dir):
    """End to end: our forward pass, then our criterion, against the original's losses."""
    _, criterion, _, fixture, outputs = oracle_case(name, oracle_dir)
    losses = criterion(outputs, fixture["targets"])
    for k, expected in fixture["losses"].items():
        assert_close(losses[k], expected, atol=OUTPUT_ATOL[name], what=f"{name} {k}")


@pytest.mark.parametrize("name", FIXTURES)
def test_losses_on_synthetic_outputs_match_original(name, oracle_dir):
    _, criterion, _, fixture, _ = oracle_case(name, oracle_dir)
    synthetic = fixture["synthetic"]
    assert_same_losses(criterion, synthetic["outputs"], synthetic, fixture["targets"], f"{name} synthetic")


@pytest.mark.parametrize("name", FIXTURES)
def test_bbox_postprocess_matches_original(name, oracle_dir):
    _, _, postprocessors, fixture, _ = oracle_case(name, oracle_dir)
    orig_sizes = torch.stack([t["orig_size"] for t in fixture["targets"]])
    assert_same_bbox(postprocessors["bbox"](fixture["outputs"], orig_sizes), fixture["postprocess"]["bbox"], name)
    synthetic = fixture["synthetic"]
    assert_same_bbox(postprocessors["bbox"](synthetic["outputs"], orig_sizes), synthetic["postprocess"]["bbox"],
                     f"{name} synthetic")


def _panoptic_case(oracle_dir):
    _, _, postprocessors, fixture, _ = oracle_case("tiny_r50_panoptic", oracle_dir)
    synthetic = fixture["synthetic"]
    orig_sizes = torch.stack([t["orig_size"] for t in fixture["targets"]])
    sizes = torch.stack([t["size"] for t in fixture["targets"]])
    return postprocessors, synthetic, orig_sizes, sizes


def test_segm_postprocess_matches_original(oracle_dir):
    postprocessors, synthetic, orig_sizes, sizes = _panoptic_case(oracle_dir)
    results = postprocessors["bbox"](synthetic["outputs"], orig_sizes)
    results = postprocessors["segm"](results, synthetic["outputs"], orig_sizes, sizes)
    for r, expected in zip(results, synthetic["postprocess"]["segm_masks"]):
        assert r["masks"].shape == expected.shape and r["masks"].dtype == expected.dtype
        agreement = (r["masks"] == expected).float().mean().item()
        assert agreement >= 0.999, f"segm masks agree on {agreement:.5f} of pixels"


@pytest.mark.parametrize("key", ["panoptic", "panoptic_low"])
def test_panoptic_postprocess_matches_original(key, oracle_dir):
    _, synthetic, orig_sizes, sizes = _panoptic_case(oracle_dir)
    threshold = synthetic["postprocess"][f"{key}_threshold"]
    post = PostProcessPanoptic(coco_panoptic_is_thing_map(250), threshold=threshold)
    preds = post(synthetic["outputs"], sizes, orig_sizes)
    for pred, expected in zip(preds, synthetic["postprocess"][key]):
        ours = rgb2id(np.asarray(Image.open(io.BytesIO(pred["png_string"])).convert("RGB")))
        theirs = rgb2id(np.asarray(Image.open(io.BytesIO(expected["png_string"])).convert("RGB")))
        assert ours.shape == theirs.shape
        assert (ours == theirs).mean() >= 0.999
        strip = [(s["category_id"], s["isthing"], s["area"]) for s in pred["segments_info"]]
        assert strip == [(s["category_id"], s["isthing"], s["area"]) for s in expected["segments_info"]]
