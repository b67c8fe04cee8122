"""Training engine: a step reduces the loss, resume is exact, checkpoints/logs in the official layout."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch

from torchdetr import DETRConfig, build_model, load_checkpoint
from torchdetr.cli import main as cli_main
from torchdetr.data.build import build_dataset
from torchdetr.data.synthetic import write_coco_folder
from torchdetr.engine.loop import TrainingDiverged, train_one_epoch
from torchdetr.engine.optim import build_optimizer
from torchdetr.engine.run import train
from torchdetr.evaluation.tables import format_stats_table
from torchdetr.inference.loading import load_model
from torchdetr.structures import collate_fn
from torchdetr.training import build_training_model

from .test_atomic_write import DiskFullAfter
from .tiny import TINY_MODEL

TINY = TINY_MODEL | dict(num_queries=8, dataset_file='synthetic', num_train=16, num_val=8, image_size=64, batch_size=4,
                         num_workers=0, epochs=1, device='cpu', lr_backbone=0.0001)


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


@pytest.mark.parametrize("techniques", [{}, {"dn_groups": 2}], ids=["plain", "denoising"])
def test_train_one_epoch_equals_the_original_loop(techniques):
    """The engine's epoch takes exactly the steps of the original ``engine.train_one_epoch``, written out here."""
    cfg = DETRConfig(**TINY, num_classes=6, dropout=0.0, **techniques)
    data = build_dataset("val", cfg)  # deterministic transforms
    batches = [collate_fn([data[i] for i in range(start, start + 4)]) for start in (0, 4)]
    torch.manual_seed(0)
    model, criterion, _ = build_model(cfg)
    training = build_training_model(model, criterion, cfg)
    module, loss_fn = training if training is not None else (model, criterion)
    reference, reference_loss_fn = copy.deepcopy(module), copy.deepcopy(loss_fn)
    optimizer, _, _ = build_optimizer(module, cfg)
    reference_optimizer, _, _ = build_optimizer(reference, cfg)

    torch.manual_seed(1)  # denoising queries draw their noise during the forward pass
    stats, iterations = train_one_epoch(module, loss_fn, batches, optimizer, torch.device("cpu"), 0, cfg)

    torch.manual_seed(1)
    reference.train()
    reference_loss_fn.train()
    weights, totals, ce = reference_loss_fn.weight_dict, [], []
    for samples, targets in batches:
        outputs = reference(samples, targets) if training is not None else reference(samples)
        loss_dict = reference_loss_fn(outputs, targets)
        loss = sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)
        reference_optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.clip_max_norm)
        reference_optimizer.step()
        totals.append(loss.item())
        ce.append(loss_dict["loss_ce"].item() * weights["loss_ce"])

    assert iterations == len(batches)
    assert stats["loss"] == pytest.approx(sum(totals) / len(totals), rel=1e-6)
    assert stats["loss_ce"] == pytest.approx(sum(ce) / len(ce), rel=1e-6)
    assert stats["lr"] == cfg.lr
    for (name, trained), expected in zip(module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(trained, expected, msg=name)


def test_detr_eval_equals_train_eval_and_the_runs_last_evaluation(tmp_path, capsys):
    """``detr eval --model CKPT`` and ``detr train --eval --resume CKPT`` evaluate what training evaluated last.

    The run keeps an EMA of its weights: training evaluates the EMA weights, so both commands must too.
    """
    data = write_coco_folder(tmp_path / "shapes", num_train=8, num_val=4, seed=3, image_size=64)
    run_dir = tmp_path / "run"
    cfg = DETRConfig(**{**TINY, "dataset_file": "coco"}, coco_path=str(data), num_classes=None, ema=True,
                     output_dir=str(run_dir))
    logged = train(cfg).history[-1]
    capsys.readouterr()
    checkpoint = str(run_dir / "checkpoint.pth")
    data_flags = ["--coco_path", str(data), "--image_size", "64", "--batch_size", "4", "--num_workers", "0",
                  "--device", "cpu"]
    architecture = ["--backbone", "resnet18", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1",
                    "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries", "8", "--backbone_weights", "none"]
    assert cli_main(["eval", "--model", checkpoint, *data_flags, "--output_dir", str(tmp_path / "eval")]) == 0
    printed_eval = capsys.readouterr().out
    assert cli_main(["train", "--eval", "--resume", checkpoint, *architecture, *data_flags,
                     "--output_dir", str(tmp_path / "train_eval")]) == 0
    printed_train_eval = capsys.readouterr().out

    assert printed_eval == printed_train_eval
    assert format_stats_table(logged["test_coco_eval_bbox"], title="bbox") in printed_eval
    detections = json.loads((run_dir / "detections_bbox.json").read_text())
    assert detections  # scores of every query: equal files mean equal predictions
    for out in ("eval", "train_eval"):
        assert json.loads((tmp_path / out / "detections_bbox.json").read_text()) == detections
        saved = torch.load(tmp_path / out / "eval" / "latest.pth", weights_only=True)
        torch.testing.assert_close(saved["precision"], torch.load(run_dir / "eval" / "latest.pth")["precision"])


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
    # the continued run's log holds the whole run: the rows the checkpoint carries, then its own
    continued = [json.loads(line) for line in (tmp_path / "resumed" / "log.txt").read_text().splitlines()]
    assert continued[:2] == rows and [r["epoch"] for r in continued] == [0, 1, 2]
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


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, capsys):
    cfg = DETRConfig(**{**TINY, "lr_backbone": 1e30}, num_classes=6, lr=1e30, clip_max_norm=0, output_dir=str(tmp_path))
    with pytest.raises(TrainingDiverged, match="Training stopped"):
        train(cfg.replace(epochs=3))
    # the command prints it as one line with exit code 1 (not a user error, not a crash)
    flags = [f"--{k}={v}" for k, v in TINY.items() if k not in ("epochs", "lr_backbone")]
    code = cli_main(["train", *flags, "--epochs=3", "--lr=1e30", "--lr_backbone=1e30", "--clip_max_norm=0"])
    err = capsys.readouterr().err
    assert code == 1 and "Training stopped" in err and "Traceback" not in err


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


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CLI_TINY = [f"--{k}={v}" for k, v in {**TINY, "lr_backbone": 0}.items()]


def test_cli_refuses_an_earlier_run_in_one_line_and_overwrite_replaces_it(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert cli_main(["train", *CLI_TINY, "--output_dir", str(out)]) == 0
    capsys.readouterr()
    before = _tree(out)
    assert cli_main(["train", *CLI_TINY, "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds an earlier run" in err and "--overwrite" in err and "Traceback" not in err
    assert _tree(out) == before  # nothing changed, nothing written
    with caplog.at_level("WARNING", logger="torchdetr.train"):
        assert cli_main(["train", *CLI_TINY, "--output_dir", str(out), "--overwrite"]) == 0
    assert "--overwrite: replacing the earlier run" in caplog.text and "log.txt (1 epoch)" in caplog.text
    assert [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()] == [0]  # not [0, 0]
    assert {p.name for p in out.iterdir()} == {name.split("/")[0] for name in before}


def test_weights_that_explode_at_the_end_of_an_epoch_are_not_saved(tmp_path, monkeypatch):
    """The last step of epoch 1 makes the weights infinite: checkpoint.pth stays epoch 0's, and the message
    names it as the last good checkpoint."""
    import torchdetr.engine.run as engine_run

    real_epoch = engine_run.train_one_epoch

    def explode_in_epoch_1(model, *args, **kwargs):
        result = real_epoch(model, *args, **kwargs)
        if args[4] == 1:  # epoch
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("inf"))
        return result

    monkeypatch.setattr(engine_run, "train_one_epoch", explode_in_epoch_1)
    out = tmp_path / "run"
    cfg = DETRConfig(**{**TINY, "lr_backbone": 0, "epochs": 3}, num_classes=None, output_dir=str(out))
    with pytest.raises(TrainingDiverged) as caught:
        train(cfg)
    assert "non-finite during epoch 1" in str(caught.value)
    assert f"the last good checkpoint is {out / 'checkpoint.pth'}." in str(caught.value)
    kept = load_checkpoint(out / "checkpoint.pth")
    assert kept["epoch"] == 0 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()] == [0]
    assert not (out / "train.lock").exists()


def test_cli_disk_full_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """The disk fills up while epoch 1's checkpoint is written (its writes fail with ENOSPC)."""
    import errno
    import os
    import pathlib

    real_open, opened = pathlib.Path.open, []

    def open_(self, mode="r", *args, **kwargs):
        raw = real_open(self, mode, *args, **kwargs)
        if self.name.startswith(".checkpoint.pth.") and "w" in mode:
            opened.append(self.name)
            return DiskFullAfter(raw, room=1000) if len(opened) == 2 else raw
        return raw

    monkeypatch.setattr(pathlib.Path, "open", open_)
    out = tmp_path / "run"
    assert cli_main(["train", *CLI_TINY, "--epochs=2", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{out / 'checkpoint.pth'}: could not write the checkpoint: {os.strerror(errno.ENOSPC)}" in err
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == 0  # the previous checkpoint is kept
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == "train.lock"]


def test_cli_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    assert cli_main(["train", *CLI_TINY, "--output_dir", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output_dir {tmp_path / 'taken'} is a file" in err
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_evaluation_output_that_cannot_be_written_is_an_output_error(tmp_path):
    import errno

    from torchdetr.engine.run_dir import output_errors
    from torchdetr.errors import OutputError

    inside = tmp_path / "eval" / "latest.pth"
    with pytest.raises(OutputError, match=f"{inside}: cannot write: Read-only file system"):
        with output_errors(tmp_path):
            raise OSError(errno.EROFS, "Read-only file system", str(inside))
    with pytest.raises(PermissionError):  # an error about a file elsewhere (an input) is not an output error
        with output_errors(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", "/data/image.jpg")


@pytest.mark.parametrize("flags, expected", [
    ([], (96, 160)),  # the model's own validation size (its run's --image_size 96, --max_size 160)
    (["--image_size", "64"], (64, None)),  # given on the command line: used as given
    (["--max_size", "300"], (96, 300)),  # the cap given, the model's shorter side (as detr predict)
], ids=["model-size", "image-size-given", "max-size-given"])
def test_detr_eval_model_resizes_as_the_model_was_validated(tmp_path, flags, expected):
    """``detr eval --model CKPT`` evaluates at the model's input size (as ``detr predict`` does), not the 800 px default."""
    from torchdetr.cli import build_parser
    from torchdetr.cli.evaluate import config_for_model_evaluation

    from .test_predict import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth", image_size=96, max_size=160)
    args = build_parser("eval").parse_args(["eval", "--model", str(checkpoint), "--coco_path", str(tmp_path),
                                            *flags])
    cfg = config_for_model_evaluation(args)
    assert (cfg.image_size, cfg.max_size) == expected
    assert cfg.resume == str(checkpoint) and cfg.hidden_dim == 32
