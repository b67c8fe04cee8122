"""Matcher against brute force, criterion against closed forms, weight dict, checkpoint loader."""

from __future__ import annotations

import argparse
import itertools
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_convert, generalized_box_iou

from torchdetr import DETRConfig, build_model, load_checkpoint
from torchdetr.engine.checkpoint import load_model_state
from torchdetr.losses.matcher import HungarianMatcher
from torchdetr.losses.set_criterion import default_weight_dict, world_average_num_boxes

from .tiny import tiny_config


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """Valid normalised cxcywh boxes."""
    centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


def brute_force_cost(logits, boxes, tgt_labels, tgt_boxes, weights):
    prob = logits.softmax(-1)
    giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"))
    best = None
    q, m = len(boxes), len(tgt_boxes)
    for perm in itertools.permutations(range(q), m):
        cost = sum(
            weights[0] * -prob[i, tgt_labels[j]] + weights[1] * (boxes[i] - tgt_boxes[j]).abs().sum()
            + weights[2] * -giou[i, j]
            for j, i in enumerate(perm)
        )
        best = cost if best is None else min(best, cost)
    return best


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), q=st.integers(1, 5), m=st.integers(0, 4))
def test_matcher_is_the_optimum_over_all_permutations(seed, q, m):
    m = min(m, q)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, q, 4, generator=g)
    boxes = random_boxes(q, g)[None]
    labels = torch.randint(0, 3, (m,), generator=g)
    tgt_boxes = random_boxes(m, g)
    matcher = HungarianMatcher(1, 5, 2)
    [(src, tgt)] = matcher({"pred_logits": logits, "pred_boxes": boxes}, [{"labels": labels, "boxes": tgt_boxes}])
    assert len(src) == m and len(set(src.tolist())) == m and sorted(tgt.tolist()) == list(range(m))
    if m == 0:
        return
    prob = logits[0].softmax(-1)
    giou = generalized_box_iou(box_convert(boxes[0], "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"))
    ours = sum(-prob[i, labels[j]] + 5 * (boxes[0, i] - tgt_boxes[j]).abs().sum() - 2 * giou[i, j] for i, j in zip(src, tgt))
    assert float(ours) == pytest.approx(float(brute_force_cost(logits[0], boxes[0], labels, tgt_boxes, (1, 5, 2))), abs=1e-5)


def test_matcher_rejects_non_finite_outputs():
    matcher = HungarianMatcher(1, 5, 2)
    boxes = torch.full((1, 3, 4), float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        matcher({"pred_logits": torch.zeros(1, 3, 4), "pred_boxes": boxes},
                [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}])


def tiny_criterion(eos_coef=0.1, num_classes=3):
    cfg = tiny_config(dim_feedforward=32, num_queries=4, num_classes=num_classes, eos_coef=eos_coef)
    return build_model(cfg)[1]


def test_perfect_predictions_have_zero_box_losses_and_no_class_error():
    criterion = tiny_criterion()
    tgt = {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.1, 0.3]])}
    logits = torch.full((1, 4, 4), -10.0)
    logits[0, 0, 2] = 10
    logits[0, 1, 0] = 10
    logits[0, 2:, 3] = 10  # no object
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.1, 0.3], [0.5, 0.5, 0.1, 0.1], [0.2, 0.8, 0.1, 0.1]]])
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, [tgt])
    assert losses["loss_bbox"].item() == pytest.approx(0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0, abs=1e-6)
    assert losses["class_error"].item() == 0
    assert losses["cardinality_error"].item() == 0


def test_cross_entropy_weights_no_object_by_eos_coef():
    """loss_ce = Σ w_i·CE_i / Σ w_i with w = eos_coef for unmatched queries (closed form)."""
    criterion = tiny_criterion(eos_coef=0.25)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4, 4, generator=g)
    boxes = random_boxes(4, g)[None]
    tgt = {"labels": torch.tensor([1]), "boxes": boxes[0, 2:3].clone()}
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, [tgt])
    [(src, _)] = criterion.matcher({"pred_logits": logits, "pred_boxes": boxes}, [tgt])
    classes = torch.full((4,), 3)
    classes[src] = 1
    ce = F.cross_entropy(logits[0], classes, reduction="none")
    w = torch.where(classes == 3, 0.25, 1.0)
    assert losses["loss_ce"].item() == pytest.approx(float((w * ce).sum() / w.sum()), abs=1e-6)


def test_images_without_objects_are_fine():
    criterion = tiny_criterion()
    g = torch.Generator().manual_seed(1)
    outputs = {"pred_logits": torch.randn(2, 4, 4, generator=g), "pred_boxes": random_boxes(8, g).view(2, 4, 4)}
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    losses = criterion(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    empty = criterion(outputs, targets[:1] * 2)
    assert empty["loss_bbox"].item() == 0 and torch.isfinite(empty["loss_ce"])


def test_default_weight_dict_replicates_for_aux_layers():
    wd = default_weight_dict(masks=True, dec_layers=3)
    assert wd["loss_ce"] == 1 and wd["loss_bbox"] == 5 and wd["loss_giou"] == 2 and wd["loss_dice"] == 1
    assert {k for k in wd if k.endswith("_1")} == {"loss_ce_1", "loss_bbox_1", "loss_giou_1", "loss_mask_1", "loss_dice_1"}
    assert not any(k.endswith("_2") for k in wd)
    assert default_weight_dict(aux_loss=False).keys() == {"loss_ce", "loss_bbox", "loss_giou"}


def test_cls_loss_coef_weights_the_class_loss_of_every_layer():
    from torchdetr.losses.build import build_criterion

    criterion = build_criterion(DETRConfig(num_classes=5, dec_layers=3, cls_loss_coef=2.5))
    assert criterion.weight_dict["loss_ce"] == 2.5
    assert criterion.weight_dict["loss_ce_0"] == criterion.weight_dict["loss_ce_1"] == 2.5
    assert criterion.weight_dict["loss_bbox"] == 5  # the others keep their defaults


# ------------------------------------------------------------------ checkpoint loading
def _tiny_model(num_classes=3):
    cfg = tiny_config(dec_layers=1, dim_feedforward=32, num_queries=4, num_classes=num_classes)
    return build_model(cfg)[0], cfg


def test_load_checkpoint_accepts_official_layout_bare_state_dict_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    model, cfg = _tiny_model()
    state = model.state_dict()
    torch.save({"model": state, "args": argparse.Namespace(**cfg.to_dict()), "epoch": 3}, tmp_path / "official.pth")
    torch.save(state, tmp_path / "bare.pth")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    for name in ("official.pth", "bare.pth", "ddp.pth", "w.safetensors"):
        checkpoint = load_checkpoint(tmp_path / name)
        fresh, _ = _tiny_model()
        load_model_state(fresh, checkpoint["model"], strict=True)
        for k, v in state.items():
            assert torch.equal(fresh.state_dict()[k], v), (name, k)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_load_checkpoint_refuses_code_in_pickles(tmp_path):
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"model": {}, "x": _Evil()}, f)
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(path)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    model, _ = _tiny_model(num_classes=3)
    other, _ = _tiny_model(num_classes=5)
    with pytest.raises(ValueError, match="class head differs"):
        load_model_state(model, other.state_dict())
    skipped = load_model_state(model, other.state_dict(), reinit_class_head=True)
    assert skipped == ["class_embed.weight", "class_embed.bias"]
    assert torch.equal(model.state_dict()["query_embed.weight"], other.state_dict()["query_embed.weight"])
    partial = {k: v for k, v in model.state_dict().items() if "query_embed" not in k}
    with pytest.raises(ValueError, match="missing"):
        load_model_state(model, partial)


def test_download_failure_is_one_clear_error(monkeypatch, tmp_path):
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ConnectionError, match=r"could not download .*detr-r50-e632da11\.pth.*no network"):
        load_checkpoint("https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth")


def test_world_average_num_boxes_in_one_process_needs_no_device_round_trip():
    """The count is known on the host: a device tensor read back would wait for the device at every loss call
    (a meta device holds no values, so any read fails)."""
    targets = [{"labels": torch.zeros(3, dtype=torch.int64)}, {"labels": torch.zeros(0, dtype=torch.int64)}]
    assert world_average_num_boxes(targets, torch.device("meta")) == 3.0
    assert world_average_num_boxes([{"labels": torch.zeros(0)}], torch.device("meta")) == 1.0  # at least 1
