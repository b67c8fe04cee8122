"""Run ``detr train`` again and again, SIGKILLed at chosen or random moments (the kill test's driver).

``python -m tests.kill_driver PLAN.json`` prints a JSON report. The plan::

    {"argv": [...],                       # detr train arguments, without --output_dir
     "reference_dir": "...",              # an uninterrupted run goes here
     "run_dir": "...",                    # the killed-and-resumed run goes here (always with --resume auto)
     "steps": [["data", 5], ["backward", 3], ["checkpoint", 1], ["evaluate", 1], ["log", 2], ["random", 2.5]],
     "logs": "..."}                       # folder for each process's output

Each step is one process, forked from this one (torch and torchdetr are imported once, so a step costs
the run, not the start-up): a step ``[point, n]`` SIGKILLs itself at the n-th time it reaches
``point`` (``data``: loading a sample; ``backward``: after a backward pass, before the optimiser step;
``checkpoint``: half-way through writing a checkpoint file; ``evaluate``: after an evaluation, before
its log row; ``log``: half-way through appending a log row); ``["random", seconds]`` is killed by this
process after that many seconds. A last process runs to the end. After each step the report records
the process's exit status, the epochs in ``log.txt``, the epoch of ``checkpoint.pth`` and the files.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

import torchdetr.engine.run as engine_run
from torchdetr.cli import main as cli_main
from torchdetr.data.synthetic import SyntheticShapes
from torchdetr.engine.checkpoint import checkpoint_epoch
from torchdetr.engine.run_log import RunLog

POLL_SECONDS = 0.02


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _countdown(n: int):
    """A function that returns True the n-th time it is called."""
    calls = [0]

    def reached() -> bool:
        calls[0] += 1
        return calls[0] == n

    return reached


def install_kill_point(point: str, n: int) -> None:
    """Make this process SIGKILL itself the ``n``-th time it reaches ``point``."""
    reached = _countdown(n)
    if point == "data":
        original_getitem = SyntheticShapes.__getitem__

        def getitem(self, index):
            if reached():
                _die()
            return original_getitem(self, index)

        SyntheticShapes.__getitem__ = getitem
    elif point == "backward":
        original_backward = torch.autograd.backward

        def backward(*args, **kwargs):
            original_backward(*args, **kwargs)
            if reached():
                _die()

        torch.autograd.backward = backward
    elif point == "checkpoint":
        original_save = torch.save

        def save(obj, f, *args, **kwargs):
            if ".checkpoint" in str(getattr(f, "name", f)) and reached():
                buffer = io.BytesIO()
                original_save(obj, buffer, *args, **kwargs)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                _die()
            return original_save(obj, f, *args, **kwargs)

        torch.save = save
    elif point == "evaluate":
        original_evaluate = engine_run.evaluate

        def evaluate(*args, **kwargs):
            result = original_evaluate(*args, **kwargs)
            if reached():
                _die()
            return result

        engine_run.evaluate = evaluate
    elif point == "log":
        original_append = RunLog._append

        def append(self, line):
            if reached():
                with self.path.open("a") as f:
                    f.write(line[: len(line) // 2])
                _die()
            return original_append(self, line)

        RunLog._append = append
    else:
        raise ValueError(f"unknown kill point {point!r}")


def run_process(argv: list[str], log_file: Path, point: str | None = None, n: int = 0,
                kill_after: float | None = None) -> int:
    """Fork a process running ``detr train argv``; its exit status (``-9``: killed)."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            torch.set_num_threads(1)
            if point is not None:
                install_kill_point(point, n)
            code = cli_main(argv)
        except BaseException:  # report it in the log, exit non-zero
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = None if kill_after is None else time.monotonic() + kill_after
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = None
        time.sleep(POLL_SECONDS)


def snapshot(run_dir: Path) -> dict[str, Any]:
    """What a step left: epochs in log.txt (None for a line that is not a row), checkpoint epoch, files."""
    log_epochs: list[int | None] = []
    log_file = run_dir / "log.txt"
    if log_file.exists():
        for line in log_file.read_text().splitlines():
            try:
                log_epochs.append(json.loads(line)["epoch"])
            except (ValueError, KeyError, TypeError):
                log_epochs.append(None)
    checkpoint = run_dir / "checkpoint.pth"
    return {
        "log_epochs": log_epochs,
        "checkpoint_epoch": checkpoint_epoch(checkpoint) if checkpoint.exists() else None,
        "files": sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else [],
    }


def main(plan_file: str) -> None:
    plan = json.loads(Path(plan_file).read_text())
    logs = Path(plan["logs"])
    logs.mkdir(parents=True, exist_ok=True)
    argv, run_dir = plan["argv"], Path(plan["run_dir"])
    report: dict[str, Any] = {"steps": []}
    start = time.monotonic()
    report["reference"] = run_process([*argv, "--output_dir", plan["reference_dir"]], logs / "reference.txt")
    report["reference_seconds"] = time.monotonic() - start
    resumable = [*argv, "--output_dir", str(run_dir), "--resume", "auto"]
    for i, (point, value) in enumerate(plan["steps"]):
        log_file = logs / f"step{i}-{point}.txt"
        if point == "random":
            status = run_process(resumable, log_file, kill_after=float(value))
        else:
            status = run_process(resumable, log_file, point, int(value))
        report["steps"].append({"point": point, "value": value, "status": status, **snapshot(run_dir)})
    report["final"] = run_process(resumable, logs / "final.txt")
    report["final_state"] = snapshot(run_dir)
    report["seconds"] = time.monotonic() - start
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
