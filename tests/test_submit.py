"""``detr submit`` through submitit's local and debug executors (``torchdetr.cli.submit``, ``engine.launch``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from torchdetr.cli import main as cli_main
from torchdetr.engine.checkpoint import load_checkpoint
from torchdetr.engine.launch import JobResources, distributed_environment, master_port, preemption_signal
from torchdetr.errors import ConfigError

from .conftest import require_package
from .tiny import TINY_MODEL

require_package("submitit")  # the [submit] extra (installed in CI through [test])

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = [f"--{k}={v}" for k, v in TINY_MODEL.items()] + [
    "--dataset_file=synthetic", "--image_size=64", "--num_workers=0", "--device=cpu", "--lr_backbone=0",
    "--train_recipe=small", "--report=false"]
LAUNCH_TIMEOUT = 600


def log_epochs(folder: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (folder / "log.txt").read_text().splitlines()]


def test_distributed_environment_is_torchruns_from_the_job() -> None:
    job = SimpleNamespace(num_tasks=8, num_nodes=2, global_rank=5, local_rank=1, hostnames=["gpu-07", "gpu-08"],
                          job_id="123456_3")
    env = distributed_environment(job)
    assert env == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "gpu-07",
                   "MASTER_PORT": str(master_port("123456"))}
    assert distributed_environment(SimpleNamespace(num_tasks=1)) == {}  # one task: not distributed
    assert master_port("123456") != master_port("123457")


def test_the_preemption_signal_is_submitits_and_sigusr2_when_submitit_does_not_say() -> None:
    import submitit

    assert preemption_signal(submitit.JobEnvironment) == submitit.JobEnvironment._usr_sig()  # submitit's own answer
    assert preemption_signal(SimpleNamespace(USR_SIG="USR1")) == signal.SIGUSR1  # SUBMITIT_PREEMPT_SIGNAL=USR1
    for other_version in (SimpleNamespace(), SimpleNamespace(USR_SIG="NOT_A_SIGNAL"), SimpleNamespace(USR_SIG=12)):
        assert preemption_signal(other_version) == signal.SIGUSR2


def test_resources_are_checked_per_cluster() -> None:
    assert JobResources(gpus_per_node=8).tasks == 8 and JobResources().tasks == 1
    params = JobResources(nodes=2, gpus_per_node=8, partition="learnfair", constraint="volta32gb").parameters()
    assert params["tasks_per_node"] == 8 and params["slurm_partition"] == "learnfair" and params["nodes"] == 2
    with pytest.raises(ConfigError, match="--nodes 2: --cluster local runs on this machine only"):
        JobResources(nodes=2).check("local")
    with pytest.raises(ConfigError, match="--cluster debug runs one task"):
        JobResources(tasks_per_node=2).check("debug")


def test_submit_needs_an_output_dir(capsys) -> None:
    assert cli_main(["submit", "--cluster", "debug", *TINY_FLAGS]) == 2
    assert "detr submit needs --output_dir" in capsys.readouterr().err


def test_submit_debug_trains_in_this_process(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli_main(["submit", "--cluster", "debug", *TINY_FLAGS, "--num_train=2", "--num_val=1", "--batch_size=2",
                     "--epochs=1", f"--output_dir={out}"]) == 0
    assert log_epochs(out) == [0]


@pytest.mark.slow
def test_submit_local_survives_a_preemption_with_one_consistent_log(tmp_path: Path) -> None:
    """Two tasks through submitit's local executor; SIGUSR2 (what Slurm sends before a time limit or a
    preemption) to the first task in epoch 1: both stop at the same step, checkpoint.pth holds it, submitit
    requeues the job (checkpoint hook), which resumes and finishes; log.txt holds epochs 0-2 once each."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchdetr", "submit", "--cluster", "local", "--tasks_per_node", "2", "--timeout", "30",
         "--wait", *TINY_FLAGS, "--num_train=24", "--num_val=2", "--batch_size=1", "--epochs=3", f"--output_dir={out}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not (out / "log.txt").is_file():  # epoch 0 is logged: the preemption falls in epoch 1
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "epoch 0 never ended"
            time.sleep(0.2)
        first_task = json.loads((out / "train.lock").read_text())["pid"]
        os.kill(first_task, signal.SIGUSR2)
        stdout, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "submitted job" in stdout and "finished" in stdout
    assert "stopped by SIGUSR2" in stderr and "Requeued job" in stderr and "iteration" in stderr
    assert log_epochs(out) == [0, 1, 2]
    assert "partial_epoch" not in load_checkpoint(out / "checkpoint.pth")
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == 2


def test_training_stops_on_the_preemption_signal_submitit_is_told_to_use() -> None:
    """The run's stop handler listens to SIGTERM and to the signal ``SUBMITIT_PREEMPT_SIGNAL`` names (submitit's
    setting, read the way submitit reads it), SIGUSR2 when unset or naming no signal."""
    from torchdetr.engine.stop import stop_signals

    assert stop_signals({}) == (signal.SIGTERM, signal.SIGUSR2)
    assert stop_signals({"SUBMITIT_PREEMPT_SIGNAL": "USR1"}) == (signal.SIGTERM, signal.SIGUSR1)
    assert stop_signals({"SUBMITIT_PREEMPT_SIGNAL": "SIGUSR1"}) == (signal.SIGTERM, signal.SIGUSR1)
    assert stop_signals({"SUBMITIT_PREEMPT_SIGNAL": "TERM"}) == (signal.SIGTERM,)
    assert stop_signals({"SUBMITIT_PREEMPT_SIGNAL": "NOPE"}) == (signal.SIGTERM, signal.SIGUSR2)
