"""The fast training step (``--fast_train``) has the faithful step's losses and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from torchdetr import build_model
from torchdetr.structures import nested_tensor_from_tensor_list
from torchdetr.training.fast_step import (
    CHANNELS_LAST,
    FOLDED_NORM,
    FastSetCriterion,
    enable_fast_attention,
    enable_fast_training,
    match_layers,
)

from .tiny import tiny_config

LOSS_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-5  # relative to the largest gradient entry of the parameter
GRADIENT_FLOOR = 1e-8  # absolute: gradients that cancel to ~1e-9 (a bias before GroupNorm) are float32 rounding noise


def _batch(seed: int, counts: tuple[int, ...] = (3, 5)):
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 96, 128, generator=generator), torch.rand(3, 80, 112, generator=generator)][:len(counts)]
    targets = []
    for count in counts:
        centre = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
        size = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, 5, (count,), generator=generator), "boxes": torch.cat([centre, size], 1)})
    return nested_tensor_from_tensor_list(images), targets


def _step(model, criterion, samples, targets):
    """Losses and gradients of one training step (no dropout: the two steps then compute the same function)."""
    model.zero_grad(set_to_none=True)
    losses = criterion(model(samples), targets)
    criterion.weighted_total(losses).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("overrides, channels_last", [
    (dict(), False),
    (dict(cls_loss="focal", pre_norm=True, num_queries=7, hidden_dim=64), True),
    (dict(masks=True, hidden_dim=128, nheads=8), False),
])
def test_fast_step_has_the_faithful_losses_and_gradients(overrides, channels_last):
    torch.manual_seed(0)
    cfg = tiny_config(dropout=0.0, num_classes=5, backbone_norm="frozen", lr_backbone=1e-5, **overrides)
    model, criterion, _ = build_model(cfg)
    model.train()
    criterion.train()
    samples, targets = _batch(1)
    if cfg.masks:
        generator = torch.Generator().manual_seed(2)
        for target, image in zip(targets, samples.tensors):
            target["masks"] = torch.rand(len(target["labels"]), *image.shape[-2:], generator=generator) > 0.5
    faithful_losses, faithful_grads = _step(model, criterion, samples, targets)

    fast = enable_fast_training(model, channels_last=channels_last)
    assert fast.patched  # the frozen norms were folded
    fast_losses, fast_grads = _step(model, FastSetCriterion.from_criterion(criterion), samples, targets)
    copied = copy.deepcopy(model)  # as EMA copies it: the copy's folded convolutions use the copy's own modules
    copied_modules = set(copied.modules())
    folded = [m for m in copied.modules() if FOLDED_NORM in m.__dict__]
    assert folded and all(m.forward.__self__ is m and m.__dict__[FOLDED_NORM] in copied_modules for m in folded)
    assert torch.equal(copied(samples)["pred_logits"], model(samples)["pred_logits"])
    fast.remove()
    assert criterion(model(samples), targets)["loss_ce"] == faithful_losses["loss_ce"]  # removed: the faithful step again

    assert list(fast_losses) == list(faithful_losses)  # same entries, same order
    for key, value in faithful_losses.items():
        assert torch.allclose(fast_losses[key], value, rtol=0, atol=LOSS_TOLERANCE), key
    assert fast_grads.keys() == faithful_grads.keys()
    for name, grad in faithful_grads.items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert (fast_grads[name] - grad).abs().max() <= GRADIENT_TOLERANCE * scale + GRADIENT_FLOOR, name


def test_fast_attention_hooks_call_attention_without_weights_only_while_training():
    attention = torch.nn.MultiheadAttention(8, 2)
    handles = enable_fast_attention(attention)
    x = torch.rand(4, 1, 8)
    assert attention(x, x, x)[1] is None  # training: the fused call returns no weights
    attention.eval()
    assert attention(x, x, x)[1] is not None  # evaluation: the faithful call
    handles[0].remove()
    attention.train()
    assert attention(x, x, x)[1] is not None


def test_match_layers_equals_the_matcher_of_each_layer():
    torch.manual_seed(3)
    model, criterion, _ = build_model(tiny_config(num_classes=5))
    samples, targets = _batch(4, counts=(2, 4))
    with torch.no_grad():
        outputs = model(samples)
    layers = [*outputs["aux_outputs"], {k: v for k, v in outputs.items() if k != "aux_outputs"}]
    batched = match_layers(criterion.matcher, layers, targets)
    for layer, indices in zip(layers, batched):
        expected = criterion.matcher(layer, targets)
        for (src, tgt), (src_expected, tgt_expected) in zip(indices, expected):
            assert torch.equal(src, src_expected) and torch.equal(tgt, tgt_expected)


def test_fast_train_option_builds_the_fast_step_on_the_saved_model():
    from torchdetr.engine.run_model import build_run_model

    faithful = build_run_model(tiny_config(backbone_norm="frozen"), torch.device("cpu"), distributed=False)
    fast = build_run_model(tiny_config(backbone_norm="frozen", fast_train=True, ema=True), torch.device("cpu"),
                           distributed=False)
    assert isinstance(fast.train_criterion, FastSetCriterion) and not isinstance(faithful.train_criterion, FastSetCriterion)
    assert any(FOLDED_NORM in m.__dict__ for m in fast.model.modules())
    assert fast.model.state_dict().keys() == faithful.model.state_dict().keys()  # checkpoints unchanged
    # channels-last convolutions are part of the fast step (the faithful run keeps torch's default layout)
    first_conv = fast.model.backbone[0].body.conv1
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert first_conv.__dict__[CHANNELS_LAST]
    assert not faithful.model.backbone[0].body.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("cls_loss", ["ce", "focal"])
@pytest.mark.parametrize("counts", [(0, 4), (0, 0)])
def test_fast_criterion_with_images_without_targets(cls_loss, counts):
    """Images without any box (no matched pair at all in the second case) give the faithful criterion's losses."""
    cfg = tiny_config(num_classes=5, cls_loss=cls_loss)
    _, criterion, _ = build_model(cfg)
    criterion.train()
    generator = torch.Generator().manual_seed(5)
    batch, queries = len(counts), cfg.num_queries

    def layer():
        return {"pred_logits": torch.randn(batch, queries, cfg.num_classes + 1, generator=generator),
                "pred_boxes": torch.rand(batch, queries, 4, generator=generator) * 0.5 + 0.25}

    outputs = layer() | {"aux_outputs": [layer() for _ in range(cfg.dec_layers - 1)]}
    _, targets = _batch(3, counts)
    faithful = criterion(outputs, targets)
    fast = FastSetCriterion.from_criterion(criterion)(outputs, targets)
    assert list(fast) == list(faithful)
    for key, value in faithful.items():
        assert torch.allclose(fast[key], value, rtol=0, atol=LOSS_TOLERANCE), key
