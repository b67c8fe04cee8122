"""``detr submit``: ``detr train`` as a submitit job on Slurm (or on this machine: ``--cluster local|debug``).

The job runs the flags of ``detr train`` unchanged, one task per GPU; logs go under
``--output_dir/submitit/JOB_ID/``. The job always trains with ``--resume auto`` after its first start,
so a requeued job continues the run. Preemption or the time limit: Slurm (or the local executor) sends
SIGUSR2 (``--signal USR2@120``) or SIGTERM; every task stops after the step in progress, the first task
writes ``checkpoint.pth`` of that step, then submitit's handler requeues the job (``checkpoint()``
below), which resumes from that checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..config import DETRConfig, add_config_arguments
from ..errors import ConfigError

FOLLOW_POLL_SECONDS = 1.0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "submit",
        help="run `detr train` as a Slurm job (submitit), or locally through submitit",
        description="Submit `detr train` with the same flags to Slurm through submitit (pip install "
        "'torchdetr[submit]'): one task per GPU, torch.distributed set up from Slurm's variables, logs under "
        "--output_dir/submitit, requeued and resumed from the newest checkpoint on preemption or time-out. "
        "--cluster local runs the job on this machine (CPU included), --cluster debug in this process.",
    )
    job = p.add_argument_group("job")
    job.add_argument("--cluster", default="slurm", choices=("slurm", "local", "debug"),
                     help="where to run: slurm, local (this machine, through submitit), debug (this process)")
    job.add_argument("--nodes", type=int, default=1, help="number of nodes (default %(default)s)")
    job.add_argument("--gpus_per_node", type=int, default=0, help="GPUs per node: one task (process) each")
    job.add_argument("--tasks_per_node", type=int, default=None,
                     help="processes per node (default: --gpus_per_node, or 1 without GPUs)")
    job.add_argument("--cpus_per_task", type=int, default=None, help="CPU cores per task (data loading workers)")
    job.add_argument("--partition", default=None, help="Slurm partition")
    job.add_argument("--account", default=None, help="Slurm account")
    job.add_argument("--constraint", default=None, help="Slurm constraint (e.g. volta32gb)")
    job.add_argument("--mem_gb", type=float, default=None, help="memory per node in GB")
    job.add_argument("--timeout", type=int, default=60 * 24, metavar="MIN",
                     help="time limit of one job in minutes (default %(default)s); the run continues in a requeued job")
    job.add_argument("--job_name", default="detr", help="job name (default %(default)s)")
    job.add_argument("--wait", action="store_true", help="follow the job's log until it ends; exit with its status")
    p.add_argument("--config", help="YAML/JSON file of options (flags given on the command line win)")
    add_config_arguments(p)
    p.set_defaults(func=run)


class TrainJob:
    """The function submitit runs in every task: ``detr train`` with ``options`` (a ``DETRConfig`` dict).

    ``checkpoint()`` is submitit's preemption hook: the job to requeue is this one with ``--resume auto``.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def __call__(self) -> int:
        from ..engine.launch import requeue_through_submitit, set_distributed_environment
        from ..engine.stop import STOPPED_EXIT_CODE
        from .train import run_training

        _log_to_stderr()
        set_distributed_environment()
        code = run_training(DETRConfig(**self.options))
        if code == STOPPED_EXIT_CODE:  # preempted or timed out: checkpoint.pth holds the last step
            requeue_through_submitit()  # the first task requeues and exits here
            sys.exit(code)
        if code != 0:
            raise RuntimeError(f"detr train ended with exit code {code} (see the task's log above)")
        return code

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob({**self.options, "resume": "auto"}))


def run(args: argparse.Namespace) -> int:
    from ..engine.launch import JobResources, make_executor
    from .train import config_for_training

    cfg = config_for_training(args)
    if not cfg.output_dir:
        raise ConfigError("detr submit needs --output_dir (checkpoints, log.txt and the job's logs go there)")
    if cfg.eval:
        raise ConfigError("detr submit trains; evaluate with `detr eval` (or torchrun -m torchdetr eval)")
    if not cfg.resume:
        cfg = cfg.replace(resume="auto")  # a job started again (requeue, resubmission) continues the run
    resources = JobResources(nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
                             cpus_per_task=args.cpus_per_task, timeout_min=args.timeout, partition=args.partition,
                             account=args.account, constraint=args.constraint, mem_gb=args.mem_gb,
                             job_name=args.job_name)
    executor = make_executor(args.cluster, cfg.output_dir, resources)
    job = executor.submit(TrainJob(cfg.to_dict()))
    if args.cluster == "debug":  # runs in this process, now
        return _debug_result(job)
    stdout, stderr = Path(job.paths.stdout), Path(job.paths.stderr)
    print(f"submitted job {job.job_id} ({args.cluster}, {resources.nodes} node(s) × {resources.tasks} task(s)); "
          f"run folder {cfg.output_dir}")
    print(f"logs of the first task: {stdout} and {stderr}")
    print(f"follow it: tail -f {stderr}" + (f"   state: squeue -j {job.job_id}   cancel: scancel {job.job_id}"
                                              if args.cluster == "slurm" else ""))
    if not args.wait:
        return 0
    return _follow(job, stderr)


def _follow(job: Any, log_file: Path) -> int:
    """Print the first task's log as it grows until the job ends; 0 when it succeeded, else 1."""
    position = 0
    while True:
        done = job.done()
        if log_file.is_file():
            with log_file.open("rb") as f:
                f.seek(position)
                chunk = f.read()
            position += len(chunk)
            if chunk:
                sys.stderr.write(chunk.decode(errors="replace"))
                sys.stderr.flush()
        if done:
            break
        time.sleep(FOLLOW_POLL_SECONDS)
    state = job.state
    try:
        job.results()
    except Exception as err:  # the job failed: its log shows why
        print(f"detr submit: job {job.job_id} failed ({state}): {str(err).strip().splitlines()[-1][:300]}",
              file=sys.stderr)
        return 1
    print(f"job {job.job_id} finished ({state})")
    return 0


def _debug_result(job: Any) -> int:
    """Run a ``--cluster debug`` job in this process; its exit status."""
    try:
        job.results()
    except Exception as err:
        print(f"detr submit: the job failed: {err}", file=sys.stderr)
        return 1
    return 0


def _log_to_stderr() -> None:
    """INFO logging in a task (submitit starts Python without ``detr``'s logging set-up)."""
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
