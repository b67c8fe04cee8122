"""The kill test of issue 10: a tiny training run SIGKILLed again and again — while loading data, after a
backward pass, half-way through writing a checkpoint, after an evaluation, half-way through a log row, and
at random moments — and resumed each time with the same command (``--resume auto``) ends with ``log.txt``
holding each epoch exactly once and, in deterministic mode (one process, no workers, CPU), the same
weights, optimiser state and log rows as an uninterrupted run, bit for bit.

The runs are forked by ``tests/kill_driver.py`` (one start-up of torch for all of them)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch

from torchdetr.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
KILLED = -signal.SIGKILL
TRAIN = ["train", "--dataset_file", "synthetic", "--num_train", "8", "--num_val", "4", "--image_size", "64",
         "--backbone", "resnet18", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1",
         "--dim_feedforward", "32", "--num_queries", "5", "--batch_size", "4", "--backbone_weights", "none",
         "--lr_backbone", "0", "--num_workers", "0", "--device", "cpu", "--epochs", str(EPOCHS),
         "--best_metric", "loss"]  # the test loss improves from epoch to epoch: checkpoint_best.pth is rewritten
# 2 iterations of 4 images per epoch; each step is one process, killed at the n-th time it reaches the point
PLANNED_KILLS = [
    ("data", 5),  # epoch 0, second batch: nothing saved yet, the next run starts afresh
    ("backward", 3),  # epoch 1, first iteration: checkpoint and log row of epoch 0 exist
    ("checkpoint", 1),  # half-way through writing epoch 1's checkpoint: a partial temporary file is left
    ("evaluate", 1),  # epoch 1 saved and evaluated, its log row not written
    ("log", 2),  # the resumed run writes the missing row of epoch 1, then dies half-way through the row of epoch 2
]
RANDOM_KILLS = 3
SEED = 10


def test_a_run_killed_anywhere_and_resumed_with_the_same_command_loses_nothing(tmp_path):
    rng = random.Random(SEED)
    steps = [list(step) for step in PLANNED_KILLS] + [["random", round(rng.uniform(0.3, 3.0), 2)]
                                                      for _ in range(RANDOM_KILLS)]
    plan = {"argv": TRAIN, "reference_dir": str(tmp_path / "reference"), "run_dir": str(tmp_path / "run"),
            "steps": steps, "logs": str(tmp_path / "logs")}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.kill_driver", str(tmp_path / "plan.json")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])

    def process_log(name: str) -> str:
        return (tmp_path / "logs" / name).read_text()[-3000:]

    assert report["reference"] == 0, process_log("reference.txt")
    planned = report["steps"][: len(PLANNED_KILLS)]
    for i, step in enumerate(planned):  # each planned kill happened where planned
        assert step["status"] == KILLED, (step, process_log(f"step{i}-{step['point']}.txt"))
    data, backward, checkpoint, evaluate, log_row = planned
    assert data["log_epochs"] == [] and data["checkpoint_epoch"] is None
    assert backward["log_epochs"] == [0] and backward["checkpoint_epoch"] == 0
    # killed while writing: the old checkpoint is intact, the partial file is beside it (removed by the next run)
    assert checkpoint["checkpoint_epoch"] == 0 and any(name.endswith(".tmp") for name in checkpoint["files"])
    assert evaluate["checkpoint_epoch"] == 1 and evaluate["log_epochs"] == [0]  # the row of epoch 1 is missing
    assert not any(name.endswith(".tmp") for name in evaluate["files"])
    assert log_row["checkpoint_epoch"] == 2 and log_row["log_epochs"] == [0, 1, None]  # half a row of epoch 2
    assert all(step["status"] in (0, KILLED) for step in report["steps"])
    assert report["final"] == 0, process_log("final.txt")

    run, reference = tmp_path / "run", tmp_path / "reference"
    assert report["final_state"]["log_epochs"] == list(range(EPOCHS))  # every epoch exactly once
    assert sorted(report["final_state"]["files"]) == sorted(p.name for p in reference.iterdir())  # no lock, no .tmp
    rows = [json.loads(line) for line in (run / "log.txt").read_text().splitlines()]
    reference_rows = [json.loads(line) for line in (reference / "log.txt").read_text().splitlines()]
    for got, expected in zip(rows, reference_rows, strict=True):  # same losses and AP, epoch by epoch
        got.pop("epoch_time"), expected.pop("epoch_time")
        assert got == expected
    resumed, uninterrupted = load_checkpoint(run / "checkpoint.pth"), load_checkpoint(reference / "checkpoint.pth")
    assert resumed["epoch"] == uninterrupted["epoch"] == EPOCHS - 1
    for name, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    for index, state in uninterrupted["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(resumed["optimizer"]["state"][index][key], value), (index, key)
    # the best checkpoint, the best epoch and the patience counter in the log are those of the uninterrupted run
    resumed_best, uninterrupted_best = load_checkpoint(run / "checkpoint_best.pth"), load_checkpoint(
        reference / "checkpoint_best.pth")
    assert resumed_best["best"] == uninterrupted_best["best"]
    assert resumed_best["epoch"] == uninterrupted_best["epoch"] == reference_rows[-1]["best_epoch"]
    for name, value in uninterrupted_best["model"].items():
        assert torch.equal(resumed_best["model"][name], value), name
