"""``create_app(detector, settings)``: the FastAPI application of ``detr serve``.

Middleware, outermost first: Prometheus metrics (every request counted, refusals included), CORS
(only with ``--cors``), the streaming body-size limit; then the routes (``routes.py``) and the page's
static files under ``/static``. The detector is used from ``settings.workers`` inference threads (``worker.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from ..inference.detector import Detector
from .images import UploadError
from .limits import BodySizeLimit
from .metrics import MetricsMiddleware, ServeMetrics
from .routes import STATIC_DIR, api, public
from .service import DetectionService
from .settings import ServeSettings
from .worker import InferenceQueue, QueueFull

SERVICE_UNAVAILABLE = 503
API_DESCRIPTION = """DETR object detection and attention maps.

Send an image as the multipart field `image` or as the raw body with an `image/*` content type.
Errors are JSON `{"detail": "..."}`; 413 = too large, 415 = not an image, 422 = unreadable image or bad
parameter, 503 = busy (see `Retry-After`), 401 = API key needed."""


def create_app(detector: Detector, settings: ServeSettings | None = None) -> FastAPI:
    """An ASGI application serving ``detector`` with the limits of ``settings`` (defaults: ``ServeSettings()``)."""
    settings = settings or ServeSettings()
    metrics = ServeMetrics(settings.queue)
    queue = InferenceQueue(settings.queue, on_depth=metrics.queue_depth.set, workers=settings.workers)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()

    from .. import __version__

    app = FastAPI(title="torchdetr serve", version=__version__, description=API_DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.queue = queue
    app.state.service = DetectionService(detector, settings, metrics)

    app.include_router(api)
    app.include_router(public)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @app.exception_handler(UploadError)
    async def refused_upload(_request: Request, err: UploadError) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status_code)

    @app.exception_handler(QueueFull)
    async def busy(_request: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=SERVICE_UNAVAILABLE,
                            headers={"Retry-After": str(err.retry_after)})

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
