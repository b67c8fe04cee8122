"""Training and evaluation under ``torchrun`` (2 Gloo processes on the CPU): every technique, exact equality
with a single process, failures of a process, stopping on SIGTERM, two "nodes" on loopback.

Each test starts real processes (``python -m torch.distributed.run``), so they are few and tiny: the
tiny model, 64-pixel synthetic images, a few steps. One launch (``tests/distributed_worker.py``) trains
every technique in turn; the other tests each launch ``detr`` itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from torchdetr.config import DETRConfig
from torchdetr.engine.checkpoint import load_checkpoint
from torchdetr.engine.evaluate import evaluate_model
from torchdetr.engine.run import train
from torchdetr.engine.stop import STOPPED_EXIT_CODE
from torchdetr.losses.build import build_model

from .distributed_worker import TECHNIQUES, equal_run, run_equal
from .tiny import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
LAUNCH_TIMEOUT = 600  # seconds: a hung launch fails the test instead of blocking CI
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TINY_FLAGS = [f"--{k}={v}" for k, v in TINY_MODEL.items()] + [
    "--dataset_file=synthetic", "--image_size=64", "--num_workers=0", "--device=cpu", "--lr_backbone=0",
    "--train_recipe=small", "--report=false"]

pytestmark = pytest.mark.slow
WEIGHT_TOLERANCE = 1e-5
GRADIENT_NOISE = 1e-8  # |first moment| at or below this: a gradient of rounding noise (real ones here: > 1e-7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def log_epochs(folder: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (folder / "log.txt").read_text().splitlines()]


@pytest.fixture(scope="module")
def techniques(tmp_path_factory) -> Path:
    """Every technique trained for 2 steps on 2 processes, plus the 2 × batch 1 step (one torchrun launch)."""
    out = tmp_path_factory.mktemp("ddp")
    proc = run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "tests.distributed_worker", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("case", sorted(TECHNIQUES))
def test_every_technique_trains_on_two_processes(techniques: Path, case: str) -> None:
    outcome = json.loads((techniques / case / "outcome.json").read_text())
    assert outcome["ok"], outcome.get("traceback", outcome)
    assert outcome["iterations"] == 2  # 4 images, batch 1 on each of 2 processes
    assert log_epochs(techniques / case) == [0]
    saved = load_checkpoint(techniques / case / "checkpoint.pth")
    assert not any(k.startswith("module.") for k in saved["model"])


def test_two_processes_of_batch_1_equal_one_process_of_batch_2(techniques: Path, tmp_path: Path) -> None:
    """One step: DDP averages the gradients of 2 × batch 1 into those of batch 2 (the losses are normalised
    by the boxes of all processes)."""
    assert json.loads((techniques / "equal" / "outcome.json").read_text())["ok"]
    single = equal_run(tmp_path, world_size=1)
    run_equal(single)
    distributed = load_checkpoint(techniques / "equal" / "checkpoint.pth")
    one = load_checkpoint(Path(single.output_dir) / "checkpoint.pth")
    # the optimiser's parameters in its order (the groups of engine.optim.parameter_groups)
    model, _, _ = build_model(single.replace(num_classes=6))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n in trained if "backbone" not in n] + [n for n in trained if "backbone" in n]
    assert len(names) == len(one["optimizer"]["state"]) > 0
    for index, name in enumerate(names):
        # AdamW's first moment after one step is 0.1 × the gradient: the averaged gradient equals batch 2's
        moment, moment_ddp = one["optimizer"]["state"][index]["exp_avg"], distributed["optimizer"]["state"][index]["exp_avg"]
        scale = float(moment.abs().max())  # sums in another order: rounding relative to the largest entry
        torch.testing.assert_close(moment_ddp, moment, rtol=1e-3, atol=max(GRADIENT_NOISE, 1e-4 * scale), msg=name)
        # AdamW's first step is lr · sign(gradient): weights whose gradient is float noise (an attention's key
        # bias, to which softmax is blind) move by ±lr either way; all others must agree
        real = (moment.abs() > GRADIENT_NOISE) & (moment_ddp.abs() > GRADIENT_NOISE)
        assert real.any() or moment.abs().max() <= GRADIENT_NOISE, name
        difference = (distributed["model"][name] - one["model"][name]).abs()
        assert float(torch.where(real, difference, 0).max()) <= WEIGHT_TOLERANCE, name
    assert all(torch.equal(distributed["model"][k], v) for k, v in one["model"].items() if k not in trained)


def test_evaluation_at_the_end_of_a_distributed_epoch_equals_a_single_process(techniques: Path) -> None:
    """The 2-process run's log row holds the 12 COCO stats a single process computes from its checkpoint."""
    folder = techniques / "plain"
    row = json.loads((folder / "log.txt").read_text().splitlines()[-1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): the same float rounding in the convolutions
    try:
        single = evaluate_model(DETRConfig(**(TINY_MODEL | dict(
            dataset_file="synthetic", num_val=3, image_size=64, batch_size=1, num_workers=0, device="cpu",
            num_classes=6, resume=str(folder / "checkpoint.pth")))))
    finally:
        torch.set_num_threads(threads)
    assert row["test_coco_eval_bbox"] == single.result.coco_stats["bbox"]
    detections = json.loads((folder / "detections_bbox.json").read_text())
    assert sorted({d["image_id"] for d in detections}) == single.result.evaluator.img_ids  # each image once
    assert len(single.result.evaluator.img_ids) == 3


def test_torchrun_eval_equals_single_process_eval(techniques: Path, tmp_path: Path) -> None:
    """``torchrun -m torchdetr eval`` on 2 processes: 5 images in batches of 2 (3 batches: uneven shards, a
    short last batch) give the detections and COCO arrays of one process, each image counted once."""
    checkpoint = techniques / "plain" / "checkpoint.pth"
    flags = ["eval", "--model", str(checkpoint), "--dataset_file", "synthetic", "--num_val", "5", "--image_size", "64",
             "--batch_size", "2", "--num_workers", "0", "--device", "cpu"]
    proc = run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "torchdetr", *flags,
                "--output_dir", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run([sys.executable, "-m", "torchdetr", *flags, "--output_dir", str(tmp_path / "one")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "detections_bbox.json").read_text())
    one = json.loads((tmp_path / "one" / "detections_bbox.json").read_text())
    assert len({d["image_id"] for d in one}) == 5 and two == one
    arrays_two = torch.load(tmp_path / "two" / "eval" / "latest.pth", weights_only=True)
    arrays_one = torch.load(tmp_path / "one" / "eval" / "latest.pth", weights_only=True)
    assert arrays_two["params"]["imgIds"] == arrays_one["params"]["imgIds"]
    for key in ("precision", "recall", "scores"):
        assert torch.equal(arrays_two[key], arrays_one[key]), key


def test_quickstart_config_trains_on_two_processes(tmp_path: Path) -> None:
    """``configs/quickstart.yaml`` (anchor variant, two-stage, denoising, focal, bf16, batch norm) under
    ``torchrun -m torchdetr``: the second step used to fail (a parameter without gradient)."""
    out = tmp_path / "quick"
    proc = run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "torchdetr", "train",
                "--config", str(ROOT / "configs" / "quickstart.yaml"), "--num_train", "8", "--num_val", "2",
                "--image_size", "64", "--hidden_dim", "32", "--nheads", "2", "--dim_feedforward", "64",
                "--enc_layers", "1", "--dec_layers", "2", "--num_queries", "5", "--batch_size", "2", "--epochs", "1",
                "--output_dir", str(out), "--report=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert log_epochs(out) == [0] and "rank 1/2" in proc.stderr


def _start_ranks(argv: list[str], port: int) -> list[subprocess.Popen]:
    """Two ranks started directly (no torchrun agent to stop the survivor): only the process group's own
    failure detection and timeout can end the other."""
    procs = []
    for rank in range(2):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "torchdetr", *argv], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = LAUNCH_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


DIST_TIMEOUT_MINUTES = 0.5


def test_a_killed_rank_stops_the_other_and_the_run_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", *TINY_FLAGS, "--num_train=16", "--num_val=2", "--batch_size=1", "--epochs=3",
            f"--dist_timeout={DIST_TIMEOUT_MINUTES}", f"--output_dir={out}", "--resume=auto"]
    procs = _start_ranks(argv, free_port())
    try:
        _wait_for(out / "checkpoint.pth", procs)
        procs[1].send_signal(signal.SIGKILL)
        _, err = procs[0].communicate(timeout=DIST_TIMEOUT_MINUTES * 60 + 60)  # bounded: never a hang
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert procs[0].returncode == 1, err[-2000:]
    assert "another process of the distributed run stopped or did not answer" in err and "Traceback" not in err
    # the same command continues from the last checkpoint and finishes the run
    proc = run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "torchdetr", *argv])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert log_epochs(out) == [0, 1, 2]


def test_sigterm_saves_the_step_and_the_run_resumes(tmp_path: Path) -> None:
    """SIGTERM to rank 0 only: both processes stop at the same step boundary (the request travels with the
    loss), ``checkpoint.pth`` holds that step; ``--resume auto`` finishes with each epoch logged once."""
    out = tmp_path / "run"
    argv = ["train", *TINY_FLAGS, "--num_train=40", "--num_val=2", "--batch_size=1", "--epochs=2",
            f"--output_dir={out}", "--resume=auto"]
    procs = _start_ranks(argv, free_port())
    try:
        _wait_for(out / "log.txt", procs)  # epoch 0 is logged: the stop falls in epoch 1
        procs[0].send_signal(signal.SIGTERM)
        errors = [p.communicate(timeout=LAUNCH_TIMEOUT)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [STOPPED_EXIT_CODE] * 2, [e[-1500:] for e in errors]
    assert "stopped by SIGTERM" in errors[0] and "Traceback" not in errors[0] + errors[1]
    saved = load_checkpoint(out / "checkpoint.pth")
    partial = saved["partial_epoch"]
    assert saved["epoch"] == 0 and partial["epoch"] == 1 and 0 < partial["iteration"] < 20
    assert len(saved["rng"]) == 2 and log_epochs(out) == [0]
    proc = run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "torchdetr", *argv])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"iteration {partial['iteration']}" in proc.stderr and log_epochs(out) == [0, 1]


def test_two_nodes_on_loopback_with_c10d_rendezvous(tmp_path: Path) -> None:
    """Multi-node without Slurm: two torchrun launchers ("nodes") of one process each, c10d rendezvous."""
    out = tmp_path / "run"
    port = free_port()
    launcher = [*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
                f"127.0.0.1:{port}", "--rdzv_id", "loopback", "-m", "torchdetr", "train", *TINY_FLAGS,
                "--num_train=4", "--num_val=2", "--batch_size=1", "--epochs=1", f"--output_dir={out}"]
    nodes = [subprocess.Popen(launcher, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        errors = [node.communicate(timeout=LAUNCH_TIMEOUT)[1] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], [e[-2000:] for e in errors]
    assert "rank 0/2" in "".join(errors) and "rank 1/2" in "".join(errors)
    assert log_epochs(out) == [0]


def test_a_single_process_run_continues_bit_exactly_after_sigterm(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM in the middle of epoch 1, then ``--resume auto``: the weights and log rows equal those of a run
    never stopped (deterministic mode: one process, no workers, CPU)."""
    import torchdetr.engine.run as engine_run

    options = TINY_MODEL | dict(dataset_file="synthetic", num_train=6, num_val=2, image_size=64, batch_size=2, epochs=2,
                                num_workers=0, device="cpu", lr_backbone=0, train_recipe="small", resume="auto")

    def config(folder: str) -> DETRConfig:
        return DETRConfig(**options, output_dir=str(tmp_path / folder))

    uninterrupted = train(config("a"))
    real_epoch = engine_run.train_one_epoch

    def signal_in_epoch_1(*args, **kwargs):
        if args[5] == 1:
            kwargs["on_step"] = lambda i: os.kill(os.getpid(), signal.SIGTERM) if i == 1 else None
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(engine_run, "train_one_epoch", signal_in_epoch_1)
    stopped = train(config("b"))
    assert stopped.stopped_by == "SIGTERM" and log_epochs(tmp_path / "b") == [0]
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pth")["partial_epoch"]["iteration"] == 2
    monkeypatch.setattr(engine_run, "train_one_epoch", real_epoch)
    resumed = train(config("b"))
    assert resumed.stopped_by is None and uninterrupted.iterations == 6 and resumed.iterations == 1
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pth")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pth")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    rows_a = [json.loads(line) for line in (tmp_path / "a" / "log.txt").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (tmp_path / "b" / "log.txt").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "epoch_time"} for r in rows_b] == \
        [{k: v for k, v in r.items() if k != "epoch_time"} for r in rows_a]
