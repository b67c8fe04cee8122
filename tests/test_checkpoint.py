"""Checkpoint writing (copies before the main file, never non-finite) and the strict key check of start
weights (``engine/checkpoint.py``; the atomic protocol is tested in ``test_atomic_write.py``)."""

from __future__ import annotations

import os

import pytest
import torch

from torchdetr import DETRConfig, build_model
from torchdetr.engine.checkpoint import (
    checkpoint_epoch,
    load_model_state,
    non_finite_entries,
    resume_problem,
    write_checkpoints,
)
from torchdetr.engine.start import load_start_weights
from torchdetr.errors import InputFileError

from .tiny import TINY_MODEL

TINY = TINY_MODEL | dict(dec_layers=1, dim_feedforward=32)


def small_state(value: float = 1.0, epoch: int = 0) -> dict:
    return {"model": {"w": torch.full((4, 4), value)}, "optimizer": {"state": {}, "param_groups": []},
            "lr_scheduler": {}, "epoch": epoch}


def test_extra_checkpoints_are_copies_written_before_the_main_file(tmp_path, monkeypatch):
    order = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (order.append(os.path.basename(dst)), real_replace(src, dst)))
    paths = write_checkpoints(small_state(5.0, epoch=9), tmp_path, epoch=9, lr_drop=10)
    assert [p.name for p in paths] == ["checkpoint.pth", "checkpoint0009.pth"]
    assert order == ["checkpoint0009.pth", "checkpoint.pth"]  # the main file last: it is the commit point
    assert (tmp_path / "checkpoint.pth").read_bytes() == (tmp_path / "checkpoint0009.pth").read_bytes()
    assert checkpoint_epoch(tmp_path / "checkpoint0009.pth") == 9


def test_non_finite_weights_are_never_saved(tmp_path):
    write_checkpoints(small_state(1.0, epoch=0), tmp_path, epoch=0, lr_drop=100)
    before = (tmp_path / "checkpoint.pth").read_bytes()
    bad = small_state(1.0, epoch=1)
    bad["model"]["w"][1, 2] = float("nan")
    bad["optimizer"]["state"] = {0: {"exp_avg": torch.tensor([float("inf")])}}
    assert non_finite_entries(bad) == ["model/w/", "optimizer/state/0/exp_avg/"]
    with pytest.raises(ValueError, match="non-finite values in model/w"):
        write_checkpoints(bad, tmp_path, epoch=1, lr_drop=100)
    assert (tmp_path / "checkpoint.pth").read_bytes() == before
    assert resume_problem(bad).startswith("it holds non-finite values (model/w")
    assert resume_problem({"model": {}}) == "it holds no training state (no optimizer, lr_scheduler, epoch)"
    assert resume_problem(small_state()) is None


@pytest.mark.parametrize("other", [{"enc_layers": 2}, {"pre_norm": True}, {"dec_layers": 2}],
                         ids=["more-encoder-layers", "pre-norm", "more-decoder-layers"])
def test_pretrained_of_another_architecture_is_refused_even_with_another_class_count(tmp_path, other):
    """Only the class head may differ: any other missing/unexpected key names the file and the keys."""
    source, _, _ = build_model(DETRConfig(**{**TINY, **other}, num_classes=11))
    path = tmp_path / "pretrained.pth"
    torch.save({"model": source.state_dict()}, path)
    model, _, _ = build_model(DETRConfig(**TINY, num_classes=6))
    with pytest.raises(InputFileError) as caught:
        load_start_weights(model, DETRConfig(**TINY, num_classes=6, pretrained=str(path)))
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "only the class head may differ" in message
    extra = {k for k in source.state_dict()} ^ {k for k in model.state_dict()}
    assert any(key in message for key in extra)


def test_pretrained_with_another_class_count_loads_everything_but_the_class_head(tmp_path):
    source, _, _ = build_model(DETRConfig(**TINY, num_classes=11))
    path = tmp_path / "pretrained.pth"
    torch.save({"model": source.state_dict()}, path)
    model, _, _ = build_model(DETRConfig(**TINY, num_classes=6))
    fresh_head = model.class_embed.weight.detach().clone()
    load_start_weights(model, DETRConfig(**TINY, num_classes=6, pretrained=str(path)))
    for name, value in model.state_dict().items():
        if not name.startswith("class_embed."):
            torch.testing.assert_close(value, source.state_dict()[name], msg=name)
    torch.testing.assert_close(model.class_embed.weight, fresh_head)
    skipped = load_model_state(model, source.state_dict(), reinit_class_head=True)
    assert skipped == ["class_embed.weight", "class_embed.bias"]


def test_frozen_weights_of_another_architecture_are_refused(tmp_path):
    masks = dict(TINY, hidden_dim=128, nheads=8)
    detector, _, _ = build_model(DETRConfig(**{**masks, "enc_layers": 2}, num_classes=6))
    path = tmp_path / "detector.pth"
    torch.save({"model": detector.state_dict()}, path)
    cfg = DETRConfig(**masks, num_classes=6, masks=True, frozen_weights=str(path))
    model, _, _ = build_model(cfg)
    with pytest.raises(InputFileError, match=r"detector\.pth: weights do not fit the model: .*transformer\.encoder"):
        load_start_weights(model, cfg)


def test_resuming_a_checkpoint_with_non_finite_values_is_refused(tmp_path):
    from torchdetr.engine.optim import build_optimizer
    from torchdetr.engine.start import resume_training

    cfg = DETRConfig(**TINY, num_classes=6)
    model, _, _ = build_model(cfg)
    optimizer, scheduler, _ = build_optimizer(model, cfg)
    state = model.state_dict()
    state["query_embed.weight"][0, 0] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
                "epoch": 3}, path)
    with pytest.raises(InputFileError, match=rf"--resume {path}: the checkpoint holds non-finite values "
                                             r"\(model/query_embed\.weight\)"):
        resume_training(str(path), model, optimizer, scheduler, 0)
