"""One inference thread with a bounded admission: the model never runs on the event loop.

A request is *admitted* (``InferenceQueue.admit``) before its body is read and stays admitted until
its answer is computed; at most ``capacity`` requests are admitted at once (one running, the others
waiting their turn in arrival order). One more is refused at once with ``QueueFull`` (the route
answers 503 with ``Retry-After``), so memory stays bounded by ``capacity`` request bodies however
many clients call. Model calls run in a single worker thread, one at a time (a model uses all CPU
cores or the GPU on its own; running two at once would only make both slower), while the event
loop keeps answering ``/healthz``, ``/metrics`` and the page.
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
    """Bounded admission + one worker thread (see the module docstring).

    ``on_depth(n)`` is called with the number of admitted requests whenever it changes (for metrics).
    """

    def __init__(self, capacity: int, on_depth: Callable[[int], None] | None = None) -> None:
        self.capacity = capacity
        self._admitted = 0
        self._lock = threading.Lock()
        self._on_depth = on_depth or (lambda _n: None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detr-inference")
        self._mean_job_s = 0.0

    @property
    def depth(self) -> int:
        """Requests admitted now (waiting + running)."""
        return self._admitted

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one slot's worth: mean job time x admitted, at least 1."""
        return max(MIN_RETRY_AFTER_S, math.ceil(self._mean_job_s * self._admitted))

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
