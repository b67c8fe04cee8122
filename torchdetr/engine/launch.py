"""Jobs on a cluster through submitit (``detr submit``): the executor, and the torch.distributed
environment of each task.

A job runs one task per GPU (``--gpus_per_node`` tasks on each of ``--nodes`` nodes; on a CPU, one task
per ``--tasks_per_node``). Each task sets the variables ``torchrun`` sets (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) from submitit's view of Slurm's (``SLURM_PROCID``,
``SLURM_LOCALID``, ``SLURM_NTASKS``, the job's first node), then runs exactly what ``detr train``
runs: :func:`~torchdetr.engine.distributed.init_distributed` joins the group through ``env://`` as
under ``torchrun`` — one code path. Preemption and time limits: see ``cli/submit.py`` (a stop request
at a step boundary, a checkpoint, then submitit's requeue).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingExtraError
from .stop import DEFAULT_PREEMPT_SIGNAL, signal_named

CLUSTERS = ("slurm", "local", "debug")
SUBMITIT_DIR = "submitit"  # under --output_dir: the job's pickles and each task's stdout/stderr
MASTER_PORT_BASE = 29500  # torchrun's default port; a job's port is this + (job id mod MASTER_PORT_RANGE)
MASTER_PORT_RANGE = 10000
SIGNAL_DELAY_S = 120  # the preemption signal comes this long before the time limit: time for a step and a save


def require_submitit() -> Any:
    """The ``submitit`` module, or ``MissingExtraError`` naming the extra to install."""
    try:
        import submitit
    except ModuleNotFoundError:
        raise MissingExtraError("detr submit needs submitit: pip install 'torchdetr[submit]'") from None
    return submitit


@dataclass
class JobResources:
    """What a job asks the cluster for. ``tasks_per_node`` defaults to ``gpus_per_node`` (one process per
    GPU), or 1 without GPUs."""

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    timeout_min: int = 60
    partition: str | None = None
    account: str | None = None
    constraint: str | None = None
    mem_gb: float | None = None
    job_name: str = "detr"

    @property
    def tasks(self) -> int:
        return self.tasks_per_node if self.tasks_per_node else max(self.gpus_per_node, 1)

    def check(self, cluster: str) -> None:
        """``ConfigError`` naming the option that cannot work on ``cluster``."""
        if cluster not in CLUSTERS:
            raise ConfigError(f"--cluster {cluster!r}: choose one of {', '.join(CLUSTERS)}")
        for name in ("nodes", "timeout_min"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_min', '')} {getattr(self, name)}: must be at least 1")
        if self.gpus_per_node < 0 or (self.tasks_per_node is not None and self.tasks_per_node < 1):
            raise ConfigError("--gpus_per_node must be >= 0 and --tasks_per_node >= 1")
        if cluster != "slurm" and self.nodes > 1:
            raise ConfigError(f"--nodes {self.nodes}: --cluster {cluster} runs on this machine only (use --nodes 1)")
        if cluster == "debug" and self.tasks > 1:
            raise ConfigError(f"--cluster debug runs one task in this process; {self.tasks} tasks need --cluster local")

    def parameters(self) -> dict[str, Any]:
        """submitit ``update_parameters`` arguments (``slurm_*`` ones are ignored by the other executors)."""
        params: dict[str, Any] = dict(name=self.job_name, nodes=self.nodes, tasks_per_node=self.tasks,
                                      gpus_per_node=self.gpus_per_node, timeout_min=self.timeout_min,
                                      slurm_signal_delay_s=SIGNAL_DELAY_S)
        if self.cpus_per_task:
            params["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        for name in ("partition", "account", "constraint"):
            if getattr(self, name):
                params[f"slurm_{name}"] = getattr(self, name)
        return params


def make_executor(cluster: str, output_dir: str | Path, resources: JobResources) -> Any:
    """submitit's ``AutoExecutor`` for ``cluster`` writing under ``output_dir/submitit``."""
    submitit = require_submitit()
    resources.check(cluster)
    executor = submitit.AutoExecutor(folder=Path(output_dir) / SUBMITIT_DIR / "%j", cluster=cluster)
    executor.update_parameters(**resources.parameters())
    return executor


def master_port(job_id: str) -> int:
    """The rendezvous port of a job: the same on every task (from the job id), different between jobs."""
    digits = "".join(c for c in str(job_id).split("_")[0] if c.isdigit()) or "0"
    return MASTER_PORT_BASE + int(digits) % MASTER_PORT_RANGE


def distributed_environment(job_env: Any) -> dict[str, str]:
    """The variables ``torchrun`` would set, from submitit's ``JobEnvironment`` (Slurm's variables, or the
    local executor's); empty for a single task (then the run is not distributed)."""
    if job_env.num_tasks <= 1:
        return {}
    return {"RANK": str(job_env.global_rank), "LOCAL_RANK": str(job_env.local_rank),
            "WORLD_SIZE": str(job_env.num_tasks), "LOCAL_WORLD_SIZE": str(job_env.num_tasks // job_env.num_nodes),
            "MASTER_ADDR": job_env.hostnames[0], "MASTER_PORT": str(master_port(job_env.job_id))}


def set_distributed_environment() -> Mapping[str, str]:
    """In a task of a submitit job: set :func:`distributed_environment` in ``os.environ``; returns it."""
    submitit = require_submitit()
    variables = distributed_environment(submitit.JobEnvironment())
    os.environ.update(variables)
    return variables


def requeue_through_submitit() -> None:
    """Hand a stopped task to submitit's preemption handler: on the first task it calls the job's
    ``checkpoint()`` (the same job with ``--resume auto``), requeues it and exits; elsewhere it returns."""
    preemption = preemption_signal(require_submitit().JobEnvironment)
    handler = signal.getsignal(preemption)
    if callable(handler):
        handler(preemption, None)


def preemption_signal(job_environment: Any) -> signal.Signals:
    """The signal submitit installs its preemption handler on, from ``JobEnvironment.USR_SIG``: a public class
    attribute holding the signal's name without ``SIG`` (``USR2``, or what ``SUBMITIT_PREEMPT_SIGNAL`` named when
    submitit was imported: the name submitit itself reads). Where the attribute is missing (another submitit
    version) or names no signal, submitit's default: ``SIGUSR2``."""
    return signal_named(getattr(job_environment, "USR_SIG", None)) or DEFAULT_PREEMPT_SIGNAL
