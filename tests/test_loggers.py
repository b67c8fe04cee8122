"""Experiment trackers: an MLflow run (local file store) and a W&B run (offline mode) read back hold the numbers
of log.txt, the config and the artefacts; a resumed run continues them; a missing package is a one-line error."""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

import pytest

from torchdetr.cli import main as cli_main
from torchdetr.engine import loggers
from torchdetr.engine.loggers import row_metrics
from torchdetr.errors import MissingExtraError
from torchdetr.evaluation.tables import STAT_NAMES

from .conftest import require_package

TRAIN = ["train", "--dataset_file", "synthetic", "--num_train", "8", "--num_val", "4", "--image_size", "64",
         "--backbone", "resnet18", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1",
         "--dim_feedforward", "32", "--num_queries", "5", "--batch_size", "4", "--backbone_weights", "none",
         "--lr_backbone", "0", "--num_workers", "0", "--device", "cpu", "--best_metric", "loss"]


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.txt").read_text().splitlines()]


def test_row_metrics_name_every_number_of_a_row():
    row = {"epoch": 3, "train_loss": 1.5, "n_parameters": 10, "test_coco_eval_bbox": list(range(12)),
           "test_PQ_all": {"pq": 0.5, "n": 3}, "flag": True, "note": "text"}
    metrics = row_metrics(row)
    assert metrics["train_loss"] == 1.5 and metrics["n_parameters"] == 10
    assert [metrics[f"test_coco_eval_bbox/{name}"] for name in STAT_NAMES] == list(range(12))
    assert metrics["test_PQ_all/pq"] == 0.5 and "epoch" not in metrics and "flag" not in metrics


def _wandb_history(run_file: str) -> list[dict[str, float]]:
    """The history rows of an offline W&B run file: W&B's record log (a 7-byte header, then 32 KiB blocks of
    chunks: CRC32, length, type — full/first/middle/last), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = Path(run_file).read_bytes()
    block, header, chunk_header = 32768, 7, 7
    position, pending, history = header, b"", []
    while position + chunk_header <= len(data):
        left = block - position % block
        if left < chunk_header:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + chunk_header])
        if kind == 0 and length == 0:
            break
        pending += data[position + chunk_header:position + chunk_header + length]
        position += chunk_header + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                history.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                                for item in record.history.item})
    return history


def test_mlflow_and_wandb_runs_hold_the_numbers_of_log_txt(tmp_path, monkeypatch):
    mlflow = require_package("mlflow")
    require_package("wandb")
    tracking = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    argv = [*TRAIN, "--output_dir", str(out), "--logger", "tensorboard,mlflow,wandb"]
    assert cli_main([*argv, "--epochs", "2"]) == 0
    assert cli_main([*argv, "--epochs", "3", "--resume", "auto"]) == 0  # continues the same runs
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]

    client = mlflow.MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("torchdetr")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resumed process logged into the same run
    run_id = runs[0].info.run_id
    for row in rows:
        for key, value in row_metrics(row).items():
            history = {m.step: m.value for m in client.get_metric_history(run_id, key)}
            assert history[row["epoch"]] == pytest.approx(value), key
    assert runs[0].data.params["lr_backbone"] == "0.0" and runs[0].data.params["best_metric"] == "loss"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoint_best.pth", "report"} <= artifacts
    assert "confusion_matrix.png" in {Path(a.path).name for a in client.list_artifacts(run_id, "report")}

    run_files = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len({Path(f).name for f in run_files}) == 1  # one W&B run id, continued by the resumed process
    logged = {}
    for file in sorted(run_files):
        for entry in _wandb_history(file):
            logged[entry["_step"]] = entry
    assert sorted(logged) == [0, 1, 2]
    for row in rows:
        for key, value in row_metrics(row).items():
            assert logged[row["epoch"]][key] == pytest.approx(value), key
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_a_missing_tracker_package_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'torchdetr\[mlflow\]'"):
        loggers.require_trackers(["tensorboard", "mlflow"])
    assert cli_main([*TRAIN, "--epochs", "1", "--output_dir", str(tmp_path / "r"), "--logger", "mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "detr train: error: --logger mlflow needs the mlflow package: pip install 'torchdetr[mlflow]'"
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_logger_values_are_checked():
    from torchdetr import DETRConfig
    from torchdetr.errors import ConfigError

    assert loggers.tracker_names(DETRConfig(logger="mlflow,tensorboard,mlflow").logger) == ("mlflow", "tensorboard")
    assert loggers.tracker_names(DETRConfig(logger="none").logger) == ()
    with pytest.raises(ConfigError, match="--logger"):
        DETRConfig(logger="comet")
