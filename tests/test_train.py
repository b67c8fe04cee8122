"""Training engine: a step reduces the loss, resume is exact, checkpoints/logs in the official layout."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from torchdetr import DETRConfig, build_model, load_checkpoint
from torchdetr.cli import main as cli_main
from torchdetr.data.build import build_dataset
from torchdetr.engine.loop import TrainingDiverged
from torchdetr.engine.optim import build_optimizer
from torchdetr.engine.run import train
from torchdetr.inference.loading import load_model
from torchdetr.structures import collate_fn

TINY = dict(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=8, backbone_weights="none", dataset_file="synthetic", num_train=16, num_val=8, image_size=64,
            batch_size=4, num_workers=0, epochs=1, device="cpu", lr_backbone=1e-4)


def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = DETRConfig(**TINY, num_classes=6, dropout=0.0)
    model, criterion, _ = build_model(cfg)
    data = build_dataset("val", cfg)  # deterministic transforms
    samples, targets = collate_fn([data[i] for i in range(4)])
    optimizer, _, _ = build_optimizer(model, cfg.replace(lr=1e-3, lr_backbone=1e-3))
    model.train()

    def loss_now():
        return criterion.weighted_total(criterion(model(samples), targets))

    first = loss_now()
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_now()
        loss.backward()
        optimizer.step()
    assert loss_now().item() < 0.8 * first.item()


def test_run_writes_official_checkpoints_logs_and_resumes_exactly(tmp_path):
    out = tmp_path / "run"
    cfg = DETRConfig(**{**TINY, "epochs": 2}, output_dir=str(out), num_classes=None, lr_drop=1)
    result = train(cfg)
    assert result.config.num_classes == 6  # synthetic ids 1..5 → max + 1
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "epoch", "args"} <= set(checkpoint)
    assert isinstance(checkpoint["args"], argparse.Namespace) and checkpoint["epoch"] == 1
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    assert (out / "checkpoint0000.pth").exists()  # LR drop after epoch 0 (lr_drop=1)
    assert len(checkpoint["optimizer"]["param_groups"]) == 2
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-6)  # ÷10 after each of 2 epochs
    rows = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("train_loss", "train_class_error", "train_loss_ce", "train_loss_ce_unscaled", "test_loss",
                "test_coco_eval_bbox", "n_parameters", "train_lr"):
        assert key in rows[-1], key
    assert len(rows[-1]["test_coco_eval_bbox"]) == 12
    assert (out / "eval" / "latest.pth").exists() and (out / "detections_bbox.json").exists()

    # loads through the public loaders, architecture read from args
    loaded = load_model(out / "checkpoint.pth")
    assert loaded.config.hidden_dim == 32 and loaded.category_names[1] == "circle"

    # resume: identical optimizer/scheduler state restored, continues at the next epoch
    cfg3 = cfg.replace(epochs=3, resume=str(out / "checkpoint.pth"), output_dir=str(tmp_path / "resumed"))
    resumed_rows = []
    train(cfg3, on_epoch_end=resumed_rows.append)
    assert [r["epoch"] for r in resumed_rows] == [2]
    model, _, _ = build_model(cfg.replace(num_classes=6))
    opt, sched, _ = build_optimizer(model, cfg)
    opt.load_state_dict(checkpoint["optimizer"])
    sched.load_state_dict(checkpoint["lr_scheduler"])
    assert sched.last_epoch == 2 and opt.param_groups[0]["lr"] == pytest.approx(1e-6)


def test_fine_tuning_from_a_checkpoint_with_another_class_count(tmp_path, caplog):
    cfg = DETRConfig(**TINY, num_classes=11)
    model, _, _ = build_model(cfg)
    torch.save({"model": model.state_dict()}, tmp_path / "pre.pth")
    run = DETRConfig(**TINY, num_classes=None, pretrained=str(tmp_path / "pre.pth"))
    with caplog.at_level("WARNING"):
        result = train(run)
    assert result.model.class_embed.out_features == 7
    assert "re-initialised" in caplog.text
    torch.testing.assert_close(result.model.query_embed.weight.shape, model.query_embed.weight.shape)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    cfg = DETRConfig(**{**TINY, "lr_backbone": 1e30}, num_classes=6, lr=1e30, clip_max_norm=0, output_dir=str(tmp_path))
    with pytest.raises(TrainingDiverged, match="Training stopped"):
        train(cfg.replace(epochs=3))


def test_num_classes_too_small_is_refused():
    with pytest.raises(ValueError, match="num_classes must be at least 6"):
        train(DETRConfig(**TINY, num_classes=3))


def test_cli_train_then_eval_checkpoint(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--dataset_file", "synthetic", "--num_train", "8", "--num_val", "4", "--image_size", "64",
            "--backbone", "resnet18", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1",
            "--dim_feedforward", "32", "--num_queries", "5", "--batch_size", "4", "--epochs", "1",
            "--backbone_weights", "none", "--num_workers", "0", "--device", "cpu", "--output_dir", str(out)]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "AP50" in text and "circle" in text  # the AP table and per-class rows
    assert load_checkpoint(out / "checkpoint.pth")["args"].num_classes == 6
    code = cli_main(["eval", "--model", str(out / "checkpoint.pth"), "--dataset_file", "synthetic", "--num_val", "4",
                     "--image_size", "64", "--num_workers", "0", "--device", "cpu"])
    assert code == 0 and "AP50" in capsys.readouterr().out


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    code = cli_main(["train", "--coco_path", str(tmp_path / "missing"), "--backbone_weights", "none", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "error" in err and "Traceback" not in err


def test_distributed_training_with_torchrun_on_cpu(tmp_path):
    """Two gloo processes train one epoch; one checkpoint, losses averaged over ranks."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "torchdetr.cli", "train", "--dataset_file", "synthetic", "--num_train", "16", "--num_val", "8",
           "--image_size", "64", "--backbone", "resnet18", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1",
           "--dec_layers", "1", "--dim_feedforward", "32", "--num_queries", "5", "--batch_size", "4", "--epochs", "1",
           "--backbone_weights", "none", "--num_workers", "0", "--device", "cpu", "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank 1/2" in proc.stderr
    rows = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert len(rows) == 1 and len(rows[0]["test_coco_eval_bbox"]) == 12
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=False)
    assert checkpoint["args"].num_classes == 6 and not any(k.startswith("module.") for k in checkpoint["model"])


def test_quickstart_config_trains_and_evaluates_each_epoch(tmp_path):
    """``configs/quickstart.yaml`` (README command 1) is a valid config whose techniques all run together."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    out = tmp_path / "quick"
    args = ["train", "--config", str(config), "--num_train", "8", "--num_val", "4", "--image_size", "96",
            "--epochs", "2", "--time_budget", "0", "--batch_size", "4", "--device", "cpu", "--output_dir", str(out)]
    assert cli_main(args) == 0
    rows = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(len(r["test_coco_eval_bbox"]) == 12 for r in rows)
    saved = load_checkpoint(out / "checkpoint.pth")["args"]
    assert (saved.variant, saved.two_stage, saved.cls_loss, saved.dn_groups) == ("dab", True, "focal", 5)
    assert saved.backbone_weights == "none" and saved.num_classes == 6  # offline, classes inferred from the data
