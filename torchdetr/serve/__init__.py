"""``detr serve``: an HTTP API (FastAPI) and a web page to explore what DETR attends to.

``create_app(detector, ServeSettings(...))`` builds the ASGI application; ``detr serve`` runs it with
uvicorn. Modules, one concept each:

- ``settings``: the limits and switches of a server (``ServeSettings``);
- ``limits``: the request-body size limit, enforced while the body streams in (ASGI middleware);
- ``images``: an uploaded body → an RGB picture (header checks first, then the data layer's loader);
- ``worker``: the one inference thread with its bounded admission (full → 503 + Retry-After);
- ``metrics``: Prometheus metrics (prometheus-client);
- ``schemas``: the JSON shapes of the answers (OpenAPI at ``/docs``);
- ``heatmaps``: attention maps as JSON grids and optional PNG heatmaps;
- ``routes``: the endpoints; ``app``: the application that ties them together;
- ``static/``: the web page (plain HTML/JS/CSS, no build step, no CDN).
"""

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # keep `import torchdetr.serve` light (FastAPI is an optional extra)
        from .app import create_app

        return create_app
    raise AttributeError(name)
