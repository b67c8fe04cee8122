"""Inference threads with a bounded admission: the model never runs on the event loop.

A request is *admitted* (``InferenceQueue.admit``) before its body is read and stays admitted until
its answer is computed; at most ``capacity`` requests are admitted at once (``workers`` running, the
others waiting their turn in arrival order). One more is refused at once with ``QueueFull`` (the
route answers 503 with ``Retry-After``), so memory stays bounded by ``capacity`` request bodies
however many clients call. Model calls run in ``workers`` threads (default one: a large model uses
every CPU core or the GPU on its own; a small one leaves cores idle, where two threads help), while
the event loop keeps answering ``/healthz``, ``/metrics`` and the page.

Attention maps are captured with forward hooks on the shared model, which would also see the
forward passes of other threads: ``ModelAccess`` lets detections run side by side (shared) and a
capture run alone (exclusive).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

DURATION_SMOOTHING = 0.2  # weight of the newest job in the running mean of job durations (for Retry-After)
MIN_RETRY_AFTER_S = 1


class QueueFull(Exception):
    """Every admission slot is taken; ``retry_after`` (whole seconds) estimates when one frees up."""

    def __init__(self, capacity: int, retry_after: int) -> None:
        super().__init__(f"the server is busy: {capacity} request(s) already queued (--queue); retry in {retry_after} s")
        self.retry_after = retry_after


class InferenceQueue:
    """Bounded admission + ``workers`` inference threads (see the module docstring).

    ``on_depth(n)`` is called with the number of admitted requests whenever it changes (for metrics).
    """

    def __init__(self, capacity: int, on_depth: Callable[[int], None] | None = None, workers: int = 1) -> None:
        self.capacity = capacity
        self.workers = workers
        self._admitted = 0
        self._lock = threading.Lock()
        self._on_depth = on_depth or (lambda _n: None)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detr-inference")
        self._mean_job_s = 0.0

    @property
    def depth(self) -> int:
        """Requests admitted now (waiting + running)."""
        return self._admitted

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: mean job time x admitted / workers, at least 1."""
        return max(MIN_RETRY_AFTER_S, math.ceil(self._mean_job_s * self._admitted / self.workers))

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one admission slot for the block; raise ``QueueFull`` at once when none is free."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise QueueFull(self.capacity, self.retry_after())
            self._admitted += 1
            depth = self._admitted
        self._on_depth(depth)
        try:
            yield
        finally:
            with self._lock:
                self._admitted -= 1
                depth = self._admitted
            self._on_depth(depth)

    async def run(self, function: Callable[..., T], *args) -> T:
        """Run ``function(*args)`` in the worker thread (after the jobs before it) and await its result."""
        return await asyncio.wrap_future(self._executor.submit(self._timed, function, *args))

    def _timed(self, function: Callable[..., T], *args) -> T:
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            elapsed = time.perf_counter() - start
            self._mean_job_s += DURATION_SMOOTHING * (elapsed - self._mean_job_s) if self._mean_job_s else elapsed

    def close(self) -> None:
        """Finish the running job, drop the waiting ones and stop the thread."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class ModelAccess:
    """Shared use of the model by detections, exclusive use by attention captures (writers first).

    ``shared()`` blocks while a capture runs or waits; ``exclusive()`` waits until no detection runs.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._sharing = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive and not self._waiting_exclusive)
            self._sharing += 1
        try:
            yield
        finally:
            with self._condition:
                self._sharing -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._waiting_exclusive += 1
            self._condition.wait_for(lambda: not self._exclusive and not self._sharing)
            self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()
