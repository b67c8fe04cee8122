"""Prometheus metrics of one server (prometheus-client), exposed at ``/metrics``.

- ``detr_http_requests_total{route, method, status}``: answered requests (refusals included);
- ``detr_http_request_duration_seconds{route}``: time from request to the end of the answer;
- ``detr_inference_seconds{task}``: time of the model call in the worker (``detect`` / ``attention``);
- ``detr_queue_depth``: requests admitted now (waiting + running); ``detr_queue_capacity``: the limit.

``route`` is the route's path template (``/v1/detect``), never the raw path, so that arbitrary URLs
cannot create new series; paths that match no route count as ``unmatched``.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# seconds: from a tiny model on a GPU (ms) to a ResNet-101 on a CPU (s)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED_ROUTE = "unmatched"


class ServeMetrics:
    """The metrics of one application, in a registry of their own (several apps can live in one process)."""

    def __init__(self, queue_capacity: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("detr_http_requests", "Answered HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("detr_http_request_duration_seconds", "Time to answer an HTTP request", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inference = Histogram("detr_inference_seconds", "Time of one model call in the worker thread", ["task"],
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("detr_queue_depth", "Requests admitted now (waiting + running)", registry=self.registry)
        capacity = Gauge("detr_queue_capacity", "Requests admitted at most (--queue)", registry=self.registry)
        capacity.set(queue_capacity)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware: count every HTTP request by route template, method and status, and time it."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before the answer started is answered 500 by Starlette

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
