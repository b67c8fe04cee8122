"""Best checkpoint and early stopping: checkpoint_best.pth is the argmax of the metric in log.txt, patience stops
at the right epoch, a resumed run keeps the best so far and the patience counter, run folders load their best."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torchdetr.engine.run as engine_run
from torchdetr import DETRConfig, load_checkpoint
from torchdetr.cli import main as cli_main
from torchdetr.engine.best import BestTracker, update_on_every_process
from torchdetr.engine.evaluate import EvalResult
from torchdetr.errors import ConfigError
from torchdetr.evaluation.tables import STAT_NAMES
from torchdetr.inference.loading import load_model

TINY = dict(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=32,
            num_queries=5, backbone_weights="none", dataset_file="synthetic", num_train=8, num_val=4, image_size=64,
            batch_size=4, num_workers=0, device="cpu", lr_backbone=0.0, report=False)
PLANTED_AP = [0.1, 0.3, 0.2, 0.5, 0.4, 0.45, 0.44, 0.9, 0.9, 0.9]  # best at epoch 3, then 3 evaluations without gain


def _row(epoch, ap=None, loss=1.0):
    row = {"epoch": epoch, "train_loss": 1.0}
    if ap is not None:
        row.update(test_loss=loss, test_coco_eval_bbox=[ap, ap] + [0.0] * 10)
    return row


def test_tracker_counts_evaluations_without_improvement():
    tracker = BestTracker("AP", patience=2, min_delta=0.05)
    assert tracker.update(_row(0, 0.3)) and tracker.best.epoch == 0
    assert not tracker.update(_row(1))  # not evaluated: not counted
    assert not tracker.update(_row(2, 0.34)) and tracker.stale == 1  # +0.04 is not more than min_delta
    assert tracker.update(_row(3, 0.40)) and tracker.stale == 0 and tracker.best.value == 0.40
    assert not tracker.update(_row(4, 0.1)) and not tracker.should_stop
    assert not tracker.update(_row(5, float("nan"))) and tracker.should_stop
    assert tracker.row_entries() == {"best_epoch": 3, "best_AP": 0.40, "evaluations_without_improvement": 2}
    assert "epoch 3" in tracker.stop_message()


def test_loss_is_better_when_lower_and_replay_equals_updates():
    rows = [_row(e, 0.0, loss) for e, loss in enumerate([3.0, 2.0, 2.5, 1.0, 1.2])]
    tracker = BestTracker("loss").replay(rows)
    assert (tracker.best.epoch, tracker.best.value, tracker.stale) == (3, 1.0, 1)
    assert not tracker.should_stop  # patience 0: never stops


def test_pq_is_refused_for_runs_evaluated_with_coco_ap():
    with pytest.raises(ConfigError, match="--best_metric PQ"):
        DETRConfig(**TINY, best_metric="PQ")


def _best_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Rank 0 holds the evaluated rows (the others get empty ones, as in a run); each rank records its outcomes."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    outcomes = []
    try:
        for metric, row, bug in [("AP", _row(0, 0.3), False), ("PQ", _row(1, 0.4), False), ("AP", _row(2, 0.5), True)]:
            tracker = BestTracker(metric)
            if bug and rank == 0:
                tracker.update = lambda row: 1 / 0
            try:
                improved = update_on_every_process(tracker, row if rank == 0 else {})
                outcomes.append(["ok", improved, tracker.best.to_dict()])
            except Exception as err:  # recorded, asserted by the test
                outcomes.append([type(err).__name__, str(err)])
    finally:
        dist.destroy_process_group()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(outcomes))


@pytest.mark.slow
def test_every_process_ends_with_the_main_processes_user_error(tmp_path):
    """--best_metric PQ of a run evaluated with COCO AP: the same one-line ConfigError on both processes (not a bare
    RuntimeError with a traceback on the second); a bug on the main process is a RuntimeError on the others."""
    mp.start_processes(_best_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    main, other = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    best = {"metric": "AP", "value": 0.3, "epoch": 0}
    assert main[0] == other[0] == ["ok", True, best]
    assert main[1][0] == other[1][0] == "ConfigError" and main[1][1] == other[1][1]
    assert main[1][1].startswith("--best_metric PQ: the evaluation of epoch 1 gives no PQ") and "\n" not in main[1][1]
    assert main[2][0] == "ZeroDivisionError" and other[2] == [
        "RuntimeError", "the main process failed to evaluate --best_metric (its traceback says why)"]


@pytest.fixture
def planted(monkeypatch):
    """The real evaluation, with its bbox AP replaced by PLANTED_AP[epoch]; and each epoch's trained weights."""
    epochs = {"current": None}
    weights: dict[int, dict[str, torch.Tensor]] = {}
    original_set_epoch, original_evaluate = engine_run.set_epoch, engine_run.evaluate

    def set_epoch(loader, epoch):
        epochs["current"] = epoch
        return original_set_epoch(loader, epoch)

    def evaluate(model, *args, **kwargs):
        result: EvalResult = original_evaluate(model, *args, **kwargs)
        epoch = epochs["current"]
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        ap = PLANTED_AP[epoch]
        result.coco_stats = {"bbox": [ap if name in ("AP", "AP50") else 0.0 for name in STAT_NAMES]}
        return result

    monkeypatch.setattr(engine_run, "set_epoch", set_epoch)
    monkeypatch.setattr(engine_run, "evaluate", evaluate)
    return weights


def _rows(folder):
    return [json.loads(line) for line in (folder / "log.txt").read_text().splitlines()]


def test_best_checkpoint_is_the_argmax_and_patience_stops_at_the_right_epoch(tmp_path, planted, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="torchdetr.train"):
        result = engine_run.train(DETRConfig(**TINY, epochs=10, patience=3, output_dir=str(out)))
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]  # 3 evaluations after the best at epoch 3
    assert result.stopped_early and "early stopping" in caplog.text and "epoch 3" in caplog.text
    aps = [r["test_coco_eval_bbox"][0] for r in rows]
    best_epoch = max(range(len(aps)), key=lambda e: aps[e])
    assert best_epoch == 3 and rows[-1]["best_epoch"] == 3 and rows[-1]["best_AP"] == 0.5
    assert [r["evaluations_without_improvement"] for r in rows] == [0, 0, 1, 0, 1, 2, 3]
    best = load_checkpoint(out / "checkpoint_best.pth")
    assert best["epoch"] == 3 and best["best"] == {"metric": "AP", "value": 0.5, "epoch": 3}
    assert "optimizer" not in best  # the weights to ship
    for name, value in planted[3].items():  # the weights evaluated at epoch 3, not the last ones
        assert torch.equal(best["model"][name], value), name
    assert any(not torch.equal(planted[6][k], v) for k, v in planted[3].items())
    assert result.best == {"metric": "AP", "value": 0.5, "epoch": 3}


def test_a_resumed_run_keeps_the_best_and_the_patience_counter(tmp_path, planted):
    reference, run = tmp_path / "reference", tmp_path / "run"
    engine_run.train(DETRConfig(**TINY, epochs=10, patience=3, output_dir=str(reference)))
    engine_run.train(DETRConfig(**TINY, epochs=5, patience=3, output_dir=str(run)))  # epochs 0-4: best 3, 1 stale
    assert _rows(run)[-1]["evaluations_without_improvement"] == 1
    result = engine_run.train(DETRConfig(**TINY, epochs=10, patience=3, output_dir=str(run), resume="auto"))
    assert result.stopped_early
    expected = [{k: v for k, v in row.items() if k != "epoch_time"} for row in _rows(reference)]
    assert [{k: v for k, v in row.items() if k != "epoch_time"} for row in _rows(run)] == expected
    assert load_checkpoint(run / "checkpoint_best.pth")["epoch"] == 3
    # resuming a run that stopped early trains nothing more
    again = engine_run.train(DETRConfig(**TINY, epochs=10, patience=3, output_dir=str(run), resume="auto"))
    assert again.stopped_early and again.history == [] and len(_rows(run)) == 7


def test_a_run_folder_loads_its_best_checkpoint_and_says_so(tmp_path, caplog):
    out = tmp_path / "run"
    engine_run.train(DETRConfig(**TINY, epochs=2, best_metric="loss", output_dir=str(out)))
    rows = _rows(out)
    losses = [r["test_loss"] for r in rows]
    best = load_checkpoint(out / "checkpoint_best.pth")
    assert best["epoch"] == min(range(len(losses)), key=lambda e: losses[e])
    assert math.isclose(best["best"]["value"], min(losses))
    with caplog.at_level(logging.INFO):
        loaded = load_model(out)
    assert loaded.source == str(out / "checkpoint_best.pth") and "checkpoint_best.pth" in caplog.text
    for name, value in best["model"].items():
        assert torch.equal(loaded.model.state_dict()[name], value)
    (out / "checkpoint_best.pth").unlink()
    assert load_model(out).source == str(out / "checkpoint.pth")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["predict", str(tmp_path), "--model", str(empty), "--output", str(tmp_path / "p")]) == 2
