"""Training-only queries (groups, denoising), focal loss, schedules and EMA."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from torchdetr import DETRConfig, build_model
from torchdetr.losses.outputs import QueryLayout
from torchdetr.losses.techniques import denoising_indices
from torchdetr.models.detr import DecoderQueries
from torchdetr.models.heads import DenseHead
from torchdetr.models.postprocess import PostProcess
from torchdetr.training import ModelEMA, build_lr_scheduler, build_training_model
from torchdetr.training.queries import attention_mask

from .tiny import TINY_MODEL

TINY = TINY_MODEL | dict(num_queries=4, num_classes=5, dropout=0.0)


def targets_batch():
    return [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.7, 0.3, 0.2]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def build(**overrides):
    torch.manual_seed(0)
    cfg = DETRConfig(**{**TINY, **overrides})
    model, criterion, post = build_model(cfg)
    training = build_training_model(model, criterion, cfg)
    return cfg, model, criterion, post, training


def test_attention_mask_blocks_exactly_other_groups_and_other_denoising_copies():
    layout = QueryLayout(num_dn=6, pad_size=3, dn_groups=2, num_queries=4, num_groups=3)
    blocked = attention_mask(layout)
    assert blocked.shape == (18, 18)

    def group_of(i):
        if i < 6:
            return ("dn", i // 3)
        return ("q", (i - 6) // 4)

    for i in range(18):
        for j in range(18):
            gi, gj = group_of(i), group_of(j)
            may_see = gi == gj or (gi[0] == "dn" and gj == ("q", 0))
            assert bool(blocked[i, j]) == (not may_see), (i, j)


def test_primary_outputs_equal_plain_forward_and_are_isolated_from_extra_queries():
    cfg, model, _, _, (train_model, _) = build(num_groups=3, dn_groups=2)
    model.eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    with torch.no_grad():
        plain = model(images)
        pred = train_model(images, targets_batch())
    outputs, groups, layout = pred.outputs, pred.group_outputs, pred.layout
    assert layout.num_dn == 2 * 2 and len(groups) == 2
    torch.testing.assert_close(outputs["pred_logits"], plain["pred_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(outputs["pred_boxes"], plain["pred_boxes"], rtol=0, atol=1e-5)
    torch.testing.assert_close(outputs["aux_outputs"][0]["pred_logits"], plain["aux_outputs"][0]["pred_logits"],
                               rtol=0, atol=1e-5)
    # changing another group's queries changes that group, not the primary nor the remaining group
    with torch.no_grad():
        train_model.queries.group_query_embed.weight[:4] += 1.0
        pred2 = train_model(images, targets_batch())
    outputs2, groups2 = pred2.outputs, pred2.group_outputs
    torch.testing.assert_close(outputs2["pred_logits"], plain["pred_logits"], rtol=0, atol=1e-5)
    assert not torch.allclose(groups2[0]["pred_logits"], groups[0]["pred_logits"], atol=1e-4)
    torch.testing.assert_close(groups2[1]["pred_logits"], groups[1]["pred_logits"], rtol=0, atol=1e-5)


def test_denoising_copy_does_not_see_other_copies():
    """Changing copy 1's inputs leaves copy 0's predictions unchanged (no leak between copies)."""
    _, model, _, _, (train_model, _) = build(dn_groups=2)
    model.eval()
    images = [torch.rand(3, 64, 64)]
    targets = targets_batch()[:1]
    queries = train_model.queries
    captured = {}
    original = queries.noised_queries

    def fixed_noise(targets, device):
        dn, pad, valid = original(targets, device)
        if "first" not in captured:
            captured["first"] = (dn.content.clone(), dn.position.clone())
        else:
            content, position = captured["first"][0].clone(), captured["first"][1].clone()
            content[pad:] += 5.0  # perturb copy 1 only
            position[pad:] -= 3.0
            dn = DecoderQueries(position=position, content=content)
        return dn, pad, valid

    queries.noised_queries = fixed_noise
    with torch.no_grad():
        pred_a = train_model(images, targets)
        pred_b = train_model(images, targets)
    dn_a, dn_b, layout = pred_a.dn_outputs, pred_b.dn_outputs, pred_a.layout
    pad = layout.pad_size
    torch.testing.assert_close(dn_a["pred_boxes"][:, :pad], dn_b["pred_boxes"][:, :pad], rtol=0, atol=1e-5)
    assert not torch.allclose(dn_a["pred_boxes"][:, pad:], dn_b["pred_boxes"][:, pad:], atol=1e-4)


def test_denoising_indices_pair_each_copy_with_its_object():
    layout = QueryLayout(num_dn=6, pad_size=3, dn_groups=2, num_queries=4, num_groups=1)
    indices = denoising_indices(targets_batch(), layout)
    assert indices[0][0].tolist() == [0, 1, 3, 4] and indices[0][1].tolist() == [0, 1, 0, 1]
    assert indices[1][0].tolist() == [0, 3] and indices[1][1].tolist() == [0, 0]


def test_group_loss_is_the_sum_of_independently_matched_group_losses():
    _, model, criterion, _, (train_model, train_criterion) = build(num_groups=3)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = targets_batch()
    pred = train_model(images, targets)
    losses = train_criterion(pred, targets)
    expected = sum(criterion.weighted_total(criterion(g, targets)) for g in pred.group_outputs)
    assert losses["loss_groups"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["loss_ce"].item() == pytest.approx(criterion(pred.outputs, targets)["loss_ce"].item(), rel=1e-6)
    total = train_criterion.weighted_total(losses)
    total.backward()
    assert train_model.queries.group_query_embed.weight.grad.abs().sum() > 0


def test_denoising_loss_trains_the_extra_modules():
    _, _, _, _, (train_model, train_criterion) = build(dn_groups=3)
    pred = train_model([torch.rand(3, 64, 64)] * 2, targets_batch())
    losses = train_criterion(pred, targets_batch())
    assert torch.isfinite(losses["loss_dn"]) and losses["loss_dn"] > 0
    losses["loss_dn"].backward()
    assert train_model.queries.label_embed.weight.grad.abs().sum() > 0
    assert train_model.queries.box_pos.layers[0].weight.grad.abs().sum() > 0


def test_focal_postprocess_takes_top_query_class_pairs():
    logits = torch.full((1, 3, 4), -9.0)
    logits[0, 0, 1] = 3.0  # query 0: class 1 strong
    logits[0, 2, 0] = 1.0  # query 2: class 0
    logits[0, 2, 2] = 2.0  # query 2: class 2 stronger
    logits[0, :, 3] = 50.0  # the unused "no object" logit must not matter
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]]])
    [res] = PostProcess(focal=True)({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))
    assert res["labels"].tolist()[:3] == [1, 2, 0]
    assert res["scores"][0].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    torch.testing.assert_close(res["boxes"][1], torch.tensor([40.0, 20.0, 80.0, 40.0]))


def test_focal_matching_prefers_the_confident_query():
    _, _, criterion, _, _ = build(cls_loss="focal", set_cost_bbox=0, set_cost_giou=0)
    logits = torch.full((1, 4, 6), -5.0)
    logits[0, 2, 3] = 4.0
    outputs = {"pred_logits": logits, "pred_boxes": torch.rand(1, 4, 4) * 0.5 + 0.25}
    [(src, tgt)] = criterion.matcher(outputs, [{"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}])
    assert src.tolist() == [2]
    losses = criterion(outputs, [{"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}])
    assert losses["class_error"].item() == 0


def test_warmup_cosine_schedule_shape():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched, per_iteration = build_lr_scheduler(opt, schedule="cosine", lr_drop=100, epochs=2, iters_per_epoch=50,
                                              warmup_iters=10, min_lr_ratio=0.1)
    assert per_iteration
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=0.01) and all(a >= b - 1e-9 for a, b in itertools.pairwise(lrs[10:]))
    sched, per_iteration = build_lr_scheduler(opt, schedule="step", lr_drop=3, epochs=5, iters_per_epoch=7)
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and not per_iteration


def test_ema_tracks_the_average():
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.5, warmup=1e-9)  # decay 0.5 from the first update
    with torch.no_grad():
        model.weight.fill_(2.0)
    start = ema.module.weight.clone()
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, 0.5 * start + 0.5 * 2.0)


class _ReferenceEMA:
    """The EMA rule written out: ``ema = d·ema + (1−d)·model`` over parameters, ``d = decay·(1−exp(−k/warmup))``
    at the k-th update, buffers copied (the hand-written ModelEMA that AveragedModel replaced)."""

    def __init__(self, model, decay, warmup):
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.params = {name for name, _ in model.named_parameters()}
        self.decay, self.warmup, self.updates = decay, warmup, 0

    def update(self, model):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.warmup))
        for name, value in model.state_dict().items():
            if name in self.params:
                self.state[name].mul_(d).add_(value, alpha=1 - d)
            else:
                self.state[name].copy_(value)


def _small_model_with_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.rand(2, 3, 6, 6))
    model[0].bias.requires_grad_(False)  # frozen parameters are averaged too
    return model


def test_ema_reproduces_the_warmup_formula_bit_for_bit():
    model = _small_model_with_buffers()
    ema, reference = ModelEMA(model, decay=0.9, warmup=3), _ReferenceEMA(model, decay=0.9, warmup=3)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(6):
        model.train()
        model(torch.rand(2, 3, 6, 6) + step).square().mean().backward()  # changes weights and BN statistics
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            model[0].bias.add_(0.01)
        ema.update(model)
        reference.update(model)
    assert ema.updates == reference.updates == 6
    assert ema.current_decay() == pytest.approx(0.9 * (1 - math.exp(-6 / 3)))
    state = ema.module.state_dict()
    assert list(state) == list(reference.state)
    for name, value in reference.state.items():
        assert torch.equal(state[name], value), name
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_checkpoint_entry_keeps_its_format_both_ways(tmp_path):
    model = _small_model_with_buffers()
    ema = ModelEMA(model, decay=0.99, warmup=2)
    for _ in range(3):
        with torch.no_grad():
            model[3].weight.add_(1.0)
        ema.update(model)
    entry = ema.state_dict_for_checkpoint()
    assert set(entry) == {"model", "updates", "decay"} and entry["updates"] == 3 and entry["decay"] == 0.99
    torch.save({"ema": entry}, tmp_path / "c.pth")
    saved = torch.load(tmp_path / "c.pth", weights_only=True)["ema"]
    # an entry written by the hand-written ModelEMA: the same three keys, read back into the new one
    resumed, reference = ModelEMA(model, decay=0.99, warmup=2), _ReferenceEMA(model, decay=0.99, warmup=2)
    resumed.load_from_checkpoint(saved)
    reference.state = {k: v.clone() for k, v in saved["model"].items()}
    reference.updates = saved["updates"]
    assert resumed.updates == 3
    with torch.no_grad():
        model[3].weight.add_(1.0)
    resumed.update(model)
    reference.update(model)
    for name, value in reference.state.items():
        assert torch.equal(resumed.module.state_dict()[name], value), name


def test_techniques_refuse_masks():
    with pytest.raises(ValueError, match="--masks"):
        build(masks=True, hidden_dim=128, nheads=8, num_groups=2)


# ------------------------------------------------------------------ anchor-query variant (DAB-DETR style)
def test_dab_variant_starts_from_its_anchors_and_refines_per_layer():
    _, model, _, _, _ = build(variant="dab")
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])
    anchors = model.query_embed.weight.sigmoid()
    torch.testing.assert_close(out["pred_boxes"][0], anchors, rtol=0, atol=1e-6)  # zero-initialised corrections
    torch.testing.assert_close(out["aux_outputs"][0]["pred_boxes"][0], anchors, rtol=0, atol=1e-6)
    with torch.no_grad():
        model.bbox_embed.layers[-1].bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0]))
        out = model([torch.rand(3, 64, 64)])
    # each of the 2 layers adds 0.5 to the x logit of its input box: two steps after the anchor
    expected_x = torch.sigmoid(torch.logit(anchors[:, 0]) + 1.0)
    torch.testing.assert_close(out["pred_boxes"][0, :, 0], expected_x, rtol=0, atol=1e-5)


def test_dab_denoising_queries_start_at_the_noised_boxes_and_primary_is_isolated():
    _, model, _, _, (train_model, _) = build(variant="dab", dn_groups=2, num_groups=2)
    model.eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    captured = {}
    original = train_model.queries.noised_queries

    def spy(targets, device):
        result = original(targets, device)
        captured["anchors"] = result[0].position
        return result

    train_model.queries.noised_queries = spy
    with torch.no_grad():
        plain = model(images)
        pred = train_model(images, targets_batch())
    outputs, dn = pred.outputs, pred.dn_outputs
    torch.testing.assert_close(outputs["pred_boxes"], plain["pred_boxes"], rtol=0, atol=1e-5)
    torch.testing.assert_close(outputs["pred_logits"], plain["pred_logits"], rtol=0, atol=1e-5)
    noised = captured["anchors"].transpose(0, 1).sigmoid()  # [B, D, 4]
    torch.testing.assert_close(dn["pred_boxes"], noised, rtol=0, atol=1e-5)


def test_dab_checkpoint_loads_with_the_right_variant(tmp_path):
    from torchdetr.inference.loading import load_model

    cfg, model, _, _, _ = build(variant="dab")
    torch.save({"model": model.state_dict()}, tmp_path / "dab.pth")  # no args: inferred from the weights
    loaded = load_model(tmp_path / "dab.pth")
    assert loaded.config.variant == "dab" and loaded.config.hidden_dim == cfg.hidden_dim
    assert type(loaded.model).__name__ == "AnchorDETR"


# ------------------------------------------------------------------ dense one-to-many head
def _dense(height, width, valid_rows, valid_cols, num_classes=3):
    head = DenseHead(8, num_classes)
    mask = torch.ones(1, height, width, dtype=torch.bool)
    mask[0, :valid_rows, :valid_cols] = False
    return head(torch.randn(1, 8, height, width), mask)


def test_dense_cells_are_assigned_to_the_box_whose_centre_region_covers_them():
    from torchdetr.losses.dense import assign_cells

    dense = _dense(4, 4, 4, 4)  # cells of 0.25; centres at 0.125, 0.375, 0.625, 0.875
    big = [0.5, 0.5, 1.0, 1.0]  # centre region ±0.25 → cells with centre in [0.25, 0.75]: the middle 2x2
    small = [0.375, 0.375, 0.1, 0.1]  # region smaller than a cell → at least the cell holding its centre
    assigned = assign_cells(dense, [{"boxes": torch.tensor([big, small]), "labels": torch.tensor([1, 2])}])[0].view(4, 4)
    expected = torch.full((4, 4), -1)
    expected[1:3, 1:3] = 0
    expected[1, 1] = 1  # claimed by both: the smaller box wins
    assert torch.equal(assigned, expected)


def test_dense_padding_cells_are_never_positive_and_centres_follow_the_unpadded_image():
    from torchdetr.losses.dense import assign_cells

    dense = _dense(4, 6, 2, 3)  # valid 2 rows x 3 cols
    torch.testing.assert_close(dense.centres[0].view(4, 6, 2)[0, 0], torch.tensor([1 / 6, 1 / 4]))
    assigned = assign_cells(dense, [{"boxes": torch.tensor([[0.5, 0.5, 1.0, 1.0]]), "labels": torch.tensor([0])}])
    grid = assigned[0].view(4, 6)
    assert (grid[2:] == -1).all() and (grid[:, 3:] == -1).all() and (grid[:2, :3] == 0).sum() >= 1


def test_dense_box_losses_vanish_for_exact_boxes():
    from torchdetr.losses.dense import assign_cells, dense_loss

    dense = _dense(4, 4, 4, 4)
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.6, 0.4]]), "labels": torch.tensor([2])}
    positive = assign_cells(dense, [target])[0] >= 0
    dense.boxes[0, positive] = target["boxes"][0]
    with_boxes = dense_loss(dense, [target], class_weight=0.0)
    assert with_boxes.item() == pytest.approx(0.0, abs=1e-5)
    dense.boxes[0, positive] = torch.tensor([0.4, 0.5, 0.6, 0.4])  # shifted by 0.1 in x: L1 = 0.1 per cell
    assert dense_loss(dense, [target], class_weight=0.0, giou_weight=0.0).item() == pytest.approx(5 * 0.1, abs=1e-5)


def test_dense_head_trains_the_encoder_and_keeps_inference_unchanged():
    _, model, _, _, (train_model, train_criterion) = build(dense_head=True)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    model.eval()
    with torch.no_grad():
        plain = model(images)
        pred = train_model(images, targets_batch())
    torch.testing.assert_close(pred.outputs["pred_logits"], plain["pred_logits"], rtol=0, atol=1e-6)
    model.train()
    pred = train_model(images, targets_batch())
    losses = train_criterion(pred, targets_batch())
    losses["loss_dense"].backward()
    assert model.transformer.encoder.layers[0].linear1.weight.grad.abs().sum() > 0
    assert model.class_embed.weight.grad is None  # the dense head has its own heads


def test_two_stage_anchors_are_the_top_scoring_dense_boxes():
    _, model, _, _, _ = build(variant="dab", two_stage=True, num_queries=3)
    model.eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    with torch.no_grad():
        encoded = model.encode(images)
        coords = model.decode(encoded).boxes
    dense = encoded.proposals
    scores = dense.logits.max(-1).values.masked_fill(~dense.valid, float("-inf"))
    for b in range(2):
        top = scores[b].topk(3).indices
        expected = dense.boxes[b, top]
        # box corrections start at zero: the first layer returns its anchors unchanged
        torch.testing.assert_close(coords[0, b], expected, rtol=0, atol=1e-5)
        assert dense.valid[b, top].all()  # padding cells are never selected


def test_two_stage_is_refused_with_query_groups_and_needs_the_anchor_variant():
    with pytest.raises(ValueError, match="--two_stage"):
        DETRConfig(**TINY, two_stage=True)
    with pytest.raises(ValueError, match="--two_stage"):
        DETRConfig(**TINY, variant="dab", two_stage=True, num_groups=3)


def test_two_stage_with_fewer_cells_than_queries_reuses_the_best_cells_in_turn():
    _, model, _, _, _ = build(variant="dab", two_stage=True, num_queries=6)
    model.eval()
    with torch.no_grad():
        encoded = model.encode([torch.rand(3, 64, 64)])  # stride 32: 2x2 cells
        decoded = model.decode(encoded)
    classes, coords, dense = decoded.logits, decoded.boxes, encoded.proposals
    order = dense.logits.max(-1).values[0].argsort(descending=True)
    expected = dense.boxes[0, order[[0, 1, 2, 3, 0, 1]]]
    torch.testing.assert_close(coords[0, 0], expected, rtol=0, atol=1e-5)
    assert classes.shape[2] == 6


def test_dense_class_targets_are_the_assigned_objects_labels():
    """The focal class loss of the dense head equals one computed from targets built cell by cell."""
    from torchvision.ops import sigmoid_focal_loss

    from torchdetr.losses.dense import assign_cells, dense_loss

    dense = _dense(4, 4, 4, 4, num_classes=5)
    dense.logits = torch.cat([dense.logits, torch.randn_like(dense.logits)])  # a second image, same grid
    for name in ("boxes", "centres", "valid", "cell_size"):
        setattr(dense, name, torch.cat([getattr(dense, name)] * 2))
    targets = [{"boxes": torch.tensor([[0.3, 0.3, 0.4, 0.4], [0.75, 0.7, 0.3, 0.5]]), "labels": torch.tensor([4, 1])},
               {"boxes": torch.tensor([[0.5, 0.5, 0.9, 0.9]]), "labels": torch.tensor([3])}]
    assigned = assign_cells(dense, targets)
    expected_targets = torch.zeros_like(dense.logits)
    for b in range(2):
        for cell in range(16):
            if assigned[b, cell] >= 0:
                expected_targets[b, cell, targets[b]["labels"][assigned[b, cell]]] = 1.0
    assert expected_targets.sum() == (assigned >= 0).sum() >= 3  # every image has positives
    expected = sigmoid_focal_loss(dense.logits.flatten(0, 1), expected_targets.flatten(0, 1), reduction="sum")
    expected = expected / (assigned >= 0).sum()
    actual = dense_loss(dense, targets, class_weight=1.0, bbox_weight=0.0, giou_weight=0.0)
    assert actual.item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------------ training owns query injection
@pytest.mark.parametrize("overrides", [dict(dense_head=True), dict(variant="dab", two_stage=True, cls_loss="focal")],
                         ids=["dense_head", "two_stage"])
def test_training_outputs_without_extra_queries_equal_the_plain_forward_exactly(overrides):
    _, model, _, _, (train_model, _) = build(**overrides)
    model.eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    with torch.no_grad():
        plain = model(images)
        pred = train_model(images, targets_batch())
    assert pred.dense is not None and pred.group_outputs == [] and pred.dn_outputs is None
    assert torch.equal(pred.outputs["pred_logits"], plain["pred_logits"])
    assert torch.equal(pred.outputs["pred_boxes"], plain["pred_boxes"])
    assert torch.equal(pred.outputs["aux_outputs"][0]["pred_boxes"], plain["aux_outputs"][0]["pred_boxes"])


@pytest.mark.parametrize("variant", ["detr", "dab"])
def test_training_only_parameters_stay_out_of_the_model(variant):
    _, plain, _, _, _ = build(variant=variant)
    _, model, _, _, (train_model, _) = build(variant=variant, num_groups=2, dn_groups=2, dense_head=variant == "detr")
    assert list(model.state_dict()) == list(plain.state_dict())
    extra = {k.split(".")[0] for k in train_model.queries.state_dict()}
    assert extra == ({"group_query_embed", "label_embed", "box_pos", "dense_head"} if variant == "detr"
                     else {"group_query_embed", "label_embed"})  # anchors need no box MLP


def test_query_adapters_write_extra_queries_like_the_models_own():
    from torchdetr.models.anchor_detr import INITIAL_ANCHOR_SIZE
    from torchdetr.training.queries import BoxSineQuery, query_adapter

    _, detr, _, _, _ = build()
    _, dab, _, _, _ = build(variant="dab")
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.1], [0.7, 0.5, 0.5, 0.9]])
    detr_adapter, dab_adapter = query_adapter(detr), query_adapter(dab)
    assert detr_adapter.group_embedding(3).weight.shape == (3, 32)  # position embeddings of hidden_dim
    assert isinstance(detr_adapter.box_query(), BoxSineQuery) and detr_adapter.box_query()(boxes).shape == (2, 32)
    anchors = dab_adapter.group_embedding(6).weight.sigmoid()
    torch.testing.assert_close(anchors[:, 2:], torch.full((6, 2), INITIAL_ANCHOR_SIZE))
    box_query = dab_adapter.box_query()
    assert list(box_query.parameters()) == []
    torch.testing.assert_close(box_query(boxes).sigmoid(), boxes)  # the noised boxes are the anchors


def test_technique_total_is_the_set_criterion_total_plus_weighted_technique_losses():
    _, _, criterion, _, (train_model, train_criterion) = build(num_groups=2, dn_groups=2, dense_head=True)
    pred = train_model([torch.rand(3, 64, 64)] * 2, targets_batch())
    losses = train_criterion(pred, targets_batch())
    techniques = ("loss_groups", "loss_dn", "loss_dense")
    assert set(techniques) <= set(losses)
    expected = criterion.weighted_total(losses) + sum(train_criterion.weight_dict[k] * losses[k] for k in techniques)
    assert train_criterion.weighted_total(losses).item() == pytest.approx(expected.item(), rel=1e-6)
