"""Model structure: state-dict contract with the original, parameter counts, input forms, pieces."""

from __future__ import annotations

import math

import pytest
import torch

from torchdetr import DETRConfig, NestedTensor, build_model, hub, nested_tensor_from_tensor_list
from torchdetr.models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine

from .conftest import REFERENCE, require
from .tiny import TINY_MODEL

TINY = TINY_MODEL | dict(num_classes=7, backbone_norm='frozen')


def read_tsv(name: str) -> list[tuple[str, list[int], str]]:
    rows = []
    for line in require(REFERENCE / f"{name}.state_dict.tsv").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, [int(x) for x in shape.strip("[]").split(",") if x.strip()], dtype))
    return rows


@pytest.mark.parametrize("name", ["detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet50_panoptic"])
def test_state_dict_matches_original_contract(name):
    expected = read_tsv(name)
    model = getattr(hub, name)()
    actual = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert actual == expected


@pytest.mark.parametrize(
    "name, total, trainable",
    [
        ("detr_resnet50", 41_524_768, 41_302_368),
        ("detr_resnet101", 60_464_672, 60_242_272),
        ("detr_resnet50_panoptic", 42_899_288, 42_676_888),
    ],
)
def test_parameter_counts_match_original(name, total, trainable):
    model = getattr(hub, name)()
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


def test_hub_models_have_no_aux_outputs_and_return_postprocessor():
    model, post = hub.detr_resnet50(return_postprocessor=True, num_classes=5)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    assert set(out) == {"pred_logits", "pred_boxes"}
    assert out["pred_logits"].shape == (1, 100, 6)
    assert type(post).__name__ == "PostProcess"


def test_backbone_frozen_when_lr_backbone_not_positive():
    model, _, _ = build_model(DETRConfig(**TINY, lr_backbone=0))
    assert not any(p.requires_grad for n, p in model.named_parameters() if "backbone" in n)
    model, _, _ = build_model(DETRConfig(**TINY))
    trainable = {n.split(".")[3] for n, p in model.named_parameters() if "backbone.0" in n and p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}


def test_a_frozen_detector_keeps_its_batch_norm_statistics():
    """--masks --frozen_weights with --backbone_norm batch: only the mask head learns, and the detector's running
    statistics stay those of its checkpoint while the mask head trains."""
    from torchdetr.models.build import build_detector
    from torchdetr.models.segmentation import DETRsegm

    cfg = DETRConfig(**{**TINY, "backbone_norm": "batch", "hidden_dim": 128, "nheads": 8, "masks": True})
    model = DETRsegm(build_detector(cfg).detr, freeze_detr=True).train()
    norms = [m for m in model.detr.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.mask_head.training
    before = [m.running_mean.clone() for m in norms]
    model(torch.rand(2, 3, 64, 64))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))
    learning = DETRsegm(build_detector(cfg).detr).train()  # not frozen: they learn
    assert all(m.training for m in learning.detr.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_model_accepts_nested_tensor_list_and_batch_tensor():
    torch.manual_seed(0)
    model, _, _ = build_model(DETRConfig(**TINY))
    model.eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 96)]
    with torch.no_grad():
        from_list = model(images)
        from_nested = model(nested_tensor_from_tensor_list(images))
        batch = torch.rand(2, 3, 64, 64)
        from_tensor = model(batch)
        from_nested_batch = model(NestedTensor(batch, torch.zeros(2, 64, 64, dtype=torch.bool)))
    torch.testing.assert_close(from_list["pred_logits"], from_nested["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(from_tensor["pred_boxes"], from_nested_batch["pred_boxes"], rtol=0, atol=0)
    assert from_list["pred_boxes"].shape == (2, 5, 4)
    assert ((from_list["pred_boxes"] >= 0) & (from_list["pred_boxes"] <= 1)).all()
    assert len(from_list["aux_outputs"]) == 1


def test_padding_is_exactly_to_the_largest_size_without_rounding():
    nested = nested_tensor_from_tensor_list([torch.ones(3, 5, 7), torch.ones(3, 9, 4)])
    assert nested.tensors.shape == (2, 3, 9, 7)
    assert nested.mask[0, :5, :7].logical_not().all() and nested.mask[0, 5:].all() and not nested.mask[0, :5, :7].any()
    assert nested.mask[1, :, 4:].all() and not nested.mask[1, :, :4].any()
    assert nested.tensors[0, :, 5:].abs().sum() == 0 and nested.tensors[1, :, :, 4:].abs().sum() == 0
    assert nested.image_sizes == [(5, 7), (9, 4)]


def test_bad_images_give_clear_errors():
    with pytest.raises(ValueError, match="image 1"):
        nested_tensor_from_tensor_list([torch.ones(3, 5, 7), torch.ones(5, 7)])
    with pytest.raises(ValueError, match="empty"):
        nested_tensor_from_tensor_list([])


def test_sine_position_encoding_closed_form():
    """Without padding, position (y, x) → sin/cos of (y+1)/(H+eps)*2π / 10000^(2i/d)."""
    d = 8
    enc = PositionEmbeddingSine(num_pos_feats=d, normalize=True)
    h, w = 3, 5
    x = torch.zeros(1, 1, h, w)
    pos = enc(NestedTensor(x, torch.zeros(1, h, w, dtype=torch.bool)))
    assert pos.shape == (1, 2 * d, h, w)
    for y in range(h):
        for xx in range(w):
            yv = (y + 1) / (h + 1e-6) * 2 * math.pi
            xv = (xx + 1) / (w + 1e-6) * 2 * math.pi
            for i in range(d):
                freq = 10000 ** (2 * (i // 2) / d)
                fn = math.sin if i % 2 == 0 else math.cos
                assert pos[0, i, y, xx].item() == pytest.approx(fn(yv / freq), abs=1e-5)
                assert pos[0, d + i, y, xx].item() == pytest.approx(fn(xv / freq), abs=1e-5)


def test_sine_position_encoding_normalises_over_the_unpadded_area():
    enc = PositionEmbeddingSine(num_pos_feats=4, normalize=True)
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, 3:] = True  # width 3 valid
    pos = enc(NestedTensor(torch.zeros(1, 1, 4, 6), mask))
    small = enc(NestedTensor(torch.zeros(1, 1, 4, 3), torch.zeros(1, 4, 3, dtype=torch.bool)))
    torch.testing.assert_close(pos[..., :3], small, rtol=0, atol=1e-6)


def test_learned_position_encoding_layout():
    enc = PositionEmbeddingLearned(num_pos_feats=4)
    pos = enc(NestedTensor(torch.zeros(2, 1, 3, 5), None))
    assert pos.shape == (2, 8, 3, 5)
    torch.testing.assert_close(pos[0, :4, 1, 2], enc.col_embed.weight[2])  # x half first
    torch.testing.assert_close(pos[1, 4:, 2, 0], enc.row_embed.weight[2])
    with pytest.raises(ValueError, match="50x50"):
        enc(NestedTensor(torch.zeros(1, 1, 51, 5), None))


def test_config_defaults_are_the_originals():
    cfg = DETRConfig()
    expected = dict(lr=1e-4, lr_backbone=1e-5, batch_size=2, weight_decay=1e-4, epochs=300, lr_drop=200,
                    clip_max_norm=0.1, backbone="resnet50", dilation=False, position_embedding="sine", enc_layers=6,
                    dec_layers=6, dim_feedforward=2048, hidden_dim=256, dropout=0.1, nheads=8, num_queries=100,
                    pre_norm=False, masks=False, aux_loss=True, set_cost_class=1, set_cost_bbox=5, set_cost_giou=2,
                    mask_loss_coef=1, dice_loss_coef=1, bbox_loss_coef=5, giou_loss_coef=2, eos_coef=0.1,
                    dataset_file="coco", num_classes=91, seed=42, num_workers=2, frozen_weights=None)
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_config_rejects_bad_values_with_the_option_name():
    with pytest.raises(ValueError, match="--hidden_dim"):
        DETRConfig(hidden_dim=30, nheads=8)
    with pytest.raises(ValueError, match="--backbone"):
        DETRConfig(backbone="vgg16")
    with pytest.raises(ValueError, match="--masks needs"):
        DETRConfig(hidden_dim=64, masks=True)
    with pytest.raises(ValueError, match="unknown option"):
        DETRConfig.from_dict({"hiden_dim": 3})


def test_config_file_and_flags(tmp_path):
    import argparse

    from torchdetr.config import add_config_arguments, config_from_args

    path = tmp_path / "c.yaml"
    path.write_text("hidden_dim: 128\nnheads: 4\nmasks: true\n")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--config", str(path), "--nheads", "8", "--no_aux_loss"]))
    assert (cfg.hidden_dim, cfg.nheads, cfg.masks, cfg.aux_loss, cfg.lr) == (128, 8, True, False, 1e-4)


def test_segmentation_model_outputs_masks_at_quarter_resolution():
    cfg = DETRConfig(**{**TINY, "hidden_dim": 128, "nheads": 8}, masks=True)
    model, criterion, post = build_model(cfg)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 96, 128))
    assert out["pred_masks"].shape == (1, 5, 24, 32)
    assert {"bbox", "segm"} <= set(post)
    assert "masks" in criterion.losses


def test_demo_model_shapes_and_keys():
    model = hub.detr_demo()
    keys = set(model.state_dict())
    assert {"query_pos", "row_embed", "col_embed", "conv.weight", "linear_class.weight", "linear_bbox.bias"} <= keys
    assert "backbone.fc.weight" not in keys
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    assert out["pred_logits"].shape == (1, 100, 92) and out["pred_boxes"].shape == (1, 100, 4)


def test_torch_hub_load_from_this_repository():
    from .conftest import ROOT

    model = torch.hub.load(str(ROOT), "detr_resnet50_dc5", source="local", pretrained=False, num_classes=3)
    assert model.class_embed.out_features == 4
    layer4 = model.backbone[0].body.layer4
    assert layer4[0].conv2.stride == (1, 1) and layer4[1].conv2.dilation == (2, 2)  # DC5: stride 16
    with pytest.raises(ValueError, match="num_classes=91"):
        torch.hub.load(str(ROOT), "detr_resnet50", source="local", pretrained=True, num_classes=3)


def test_official_model_metadata():
    assert set(hub.OFFICIAL_MODELS) == {"detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5",
                                        "detr_resnet50_panoptic", "detr_resnet50_dc5_panoptic", "detr_resnet101_panoptic"}
    for spec in hub.OFFICIAL_MODELS.values():
        # the file name's suffix is the sha256 prefix that check_hash verifies
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/detr/") and spec.url.endswith(".pth")
        assert spec.categories[1] == "person" and spec.categories[90] == "toothbrush"
        # the panoptic models know COCO panoptic's 53 stuff classes too (ids 92-200, names of the sample's file)
        assert len(spec.categories) == (133 if spec.masks else 80)
        assert (spec.categories.get(200) == "rug-merged") == spec.masks
    assert hub.OFFICIAL_MODELS["detr_resnet101_dc5"].dilation and not hub.OFFICIAL_MODELS["detr_resnet101"].dilation


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dc5_halves_the_stride_without_changing_weights(name):
    plain, _, _ = build_model(DETRConfig(**{**TINY, "backbone": name}))
    dc5, _, _ = build_model(DETRConfig(**{**TINY, "backbone": name}, dilation=True))
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in dc5.state_dict().items()}
    images = nested_tensor_from_tensor_list([torch.rand(3, 128, 96)])
    assert dc5.backbone(images)[0][-1].tensors.shape[-2:] == (8, 6)
    assert plain.backbone(images)[0][-1].tensors.shape[-2:] == (4, 3)
    last = dc5.backbone[0].body.layer4[-1]
    assert all(c.dilation == (2, 2) for c in last.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3))


# ------------------------------------------------------------------ one forward path: encode → decode
def _original_one_call_outputs(detr, images):
    """DETR as the original computes it: backbone, then ``Transformer.forward`` in one call, then the heads."""
    features, pos = detr.backbone(nested_tensor_from_tensor_list(images))
    src, mask = features[-1].decompose()
    hs, memory = detr.transformer(detr.input_proj(src), mask, detr.query_embed.weight, pos[-1])
    return detr.class_embed(hs), detr.bbox_embed(hs).sigmoid(), memory


@pytest.mark.parametrize("overrides", [{}, {"pre_norm": True}, {"hidden_dim": 128, "nheads": 8, "masks": True}],
                         ids=["postnorm", "prenorm", "masks"])
def test_forward_is_decode_of_encode_and_equals_the_original_one_call_transformer(overrides):
    from torchdetr.models.detr import make_outputs

    torch.manual_seed(0)
    model, _, _ = build_model(DETRConfig(**{**TINY, **overrides}))
    model.eval()
    detr = getattr(model, "detr", model)
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 96)]
    with torch.no_grad():
        out = model(images)
        encoded = detr.encode(images)
        decoded = detr.decode(encoded)
        logits, boxes, memory = _original_one_call_outputs(detr, images)
    assert torch.equal(decoded.logits, logits) and torch.equal(decoded.boxes, boxes)
    assert torch.equal(encoded.memory_map, memory)
    assert decoded.hidden.shape == (2, 2, 5, detr.transformer.d_model)  # [L, B, Q, C]
    expected = make_outputs(logits, boxes, aux_loss=True)
    assert torch.equal(out["pred_logits"], expected["pred_logits"]) and torch.equal(out["pred_boxes"], expected["pred_boxes"])
    for a, e in zip(out["aux_outputs"], expected["aux_outputs"], strict=True):
        assert torch.equal(a["pred_logits"], e["pred_logits"]) and torch.equal(a["pred_boxes"], e["pred_boxes"])
    if overrides.get("masks"):
        with torch.no_grad():
            masks = model.predict_masks(encoded, decoded.hidden[-1])
        assert torch.equal(out["pred_masks"], masks)


@pytest.mark.parametrize("two_stage", [False, True])
def test_anchor_variant_forward_is_decode_of_encode_with_its_own_queries(two_stage):
    torch.manual_seed(0)
    model, _, _ = build_model(DETRConfig(**TINY, variant="dab", two_stage=two_stage, cls_loss="focal"))
    model.eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 96)]
    with torch.no_grad():
        out = model(images)
        encoded = model.encode(images)
        queries = model.queries(encoded)
        decoded = model.decode(encoded, queries)
    assert (encoded.proposals is not None) == two_stage
    assert queries.position.shape == (5, 2, 4) and queries.content.shape == (5, 2, 32)  # anchors [Q, B, 4]
    assert torch.equal(out["pred_logits"], decoded.logits[-1]) and torch.equal(out["pred_boxes"], decoded.boxes[-1])
    assert torch.equal(out["aux_outputs"][0]["pred_boxes"], decoded.boxes[0])
    # the first layer's boxes are its anchors (zero-initialised corrections): the queries' positions
    torch.testing.assert_close(decoded.boxes[0], queries.position.sigmoid().transpose(0, 1), rtol=0, atol=1e-6)


def test_focal_class_heads_share_one_prior():
    from torchdetr.models.heads import FOCAL_PRIOR_PROBABILITY, DenseHead

    model, _, _ = build_model(DETRConfig(**TINY, cls_loss="focal"))
    head = DenseHead(32, 7)
    for bias in (model.class_embed.bias, head.class_head.bias):
        torch.testing.assert_close(bias.sigmoid(), torch.full_like(bias, FOCAL_PRIOR_PROBABILITY), rtol=0, atol=1e-7)
    assert torch.equal(model.class_embed.bias[0], head.class_head.bias[0])
