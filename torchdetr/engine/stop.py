"""Stopping a training run cleanly on request: a signal asks, the run stops at the next step boundary.

``SIGTERM`` is what Slurm sends before it preempts or cancels a job and what ``torchrun`` sends its
workers when it shuts down; ``SIGUSR2`` is the signal submitit asks Slurm to send before a job's time
limit (``detr submit``; another one when ``SUBMITIT_PREEMPT_SIGNAL`` names it, as submitit reads it).
Either one makes the run finish the step in progress, write a checkpoint of
that exact point (``checkpoint.pth``: the weights, optimiser, schedule, random states and the epoch's
progress, see ``engine/run.py``) and end with :data:`STOPPED_EXIT_CODE`; ``--resume auto`` continues
from that step. Under ``torchrun`` the request travels with the loss every step (one all-reduce), so
every process stops at the same step even when only one received the signal.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger("torchdetr.train")

PREEMPT_SIGNAL_VARIABLE = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's setting: the signal's name without "SIG"
DEFAULT_PREEMPT_SIGNAL = signal.SIGUSR2  # submitit's default


def signal_named(name: object) -> signal.Signals | None:
    """The signal ``name`` names (``USR1``, ``SIGUSR1``, any case), or None."""
    if not isinstance(name, str):
        return None
    found = getattr(signal, "SIG" + name.strip().upper().removeprefix("SIG"), None)
    return found if isinstance(found, signal.Signals) else None


def stop_signals(environ: os._Environ | dict[str, str] | None = None) -> tuple[signal.Signals, ...]:
    """``SIGTERM`` and the preemption signal: the one ``SUBMITIT_PREEMPT_SIGNAL`` names, else ``SIGUSR2``."""
    name = (os.environ if environ is None else environ).get(PREEMPT_SIGNAL_VARIABLE)
    preempt = signal_named(name) or DEFAULT_PREEMPT_SIGNAL
    if name and signal_named(name) is None:
        log.warning("%s=%r names no signal: stopping on SIGTERM and %s", PREEMPT_SIGNAL_VARIABLE, name, preempt.name)
    return tuple(dict.fromkeys((signal.SIGTERM, preempt)))
STOPPED_EXIT_CODE = 128 + signal.SIGTERM  # 143, the shell's "terminated by SIGTERM": the run did not finish


class StopRequest:
    """Whether a stop was asked for (``requested``) and by which signal (``reason``)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        if self.reason is None:
            log.warning("%s received: the run stops after the step in progress and writes a checkpoint "
                        "(continue it with --resume auto)", reason)
        self.reason = self.reason or reason

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signal.Signals(signum).name)


class StopRequested(Exception):
    """Raised by the training loop at the step boundary where every process agreed to stop.

    ``iterations``: steps of the epoch done so far (resumed ones included); ``averager``: the epoch's
    running loss sums (a ``LossAverager``), so the resumed epoch logs the means of all its steps.
    """

    def __init__(self, reason: str, iterations: int, averager: Any) -> None:
        super().__init__(f"{reason}: stopped after iteration {iterations}")
        self.reason, self.iterations, self.averager = reason, iterations, averager


@contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] | None = None) -> Iterator[StopRequest]:
    """A :class:`StopRequest` set by ``signals`` (default :func:`stop_signals`) while the block runs (previous
    handlers restored after).

    Handlers can only be installed from the main thread; elsewhere (a run started from a thread) the
    request is never set by a signal.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request._handle) for sig in (signals or stop_signals())}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
