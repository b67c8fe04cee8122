"""``detr serve``: the HTTP API and the web page (FastAPI + uvicorn) for one model.

The model loads once; inference runs in one worker thread with a bounded queue, so ``/healthz``
answers while a request is computed. Safe by default: loopback only, size and pixel limits, no CORS,
an optional API key (``--api_key`` or ``DETR_API_KEY``).
"""

from __future__ import annotations

import argparse
import logging
import socket
from typing import TYPE_CHECKING

from ..errors import ConfigError, MissingExtraError
from .model_choice import add_model_arguments, load_detector

if TYPE_CHECKING:
    from ..inference.detector import Detector

log = logging.getLogger(__name__)

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def add_parser(subparsers) -> None:
    from ..inference.detector import DEFAULT_THRESHOLD
    from ..serve.settings import (
        API_KEY_VARIABLE,
        DEFAULT_HOST,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_UPLOAD_MB,
        DEFAULT_PORT,
        DEFAULT_QUEUE,
        DEFAULT_WORKERS,
    )

    p = subparsers.add_parser(
        "serve", help="HTTP API + web page: detections and attention maps of uploaded images",
        description="Serve a model over HTTP: POST /v1/detect, POST /v1/attention, GET /v1/model, /healthz, /metrics, "
                    "OpenAPI docs at /docs, and a web page at / to drop an image, see its detections and click into the "
                    "transformer's attention. Binds 127.0.0.1 (this machine only) unless --host says otherwise.",
    )
    add_model_arguments(p, exported_help="serve this exported model (from detr export: .onnx incl. INT8, or OpenVINO "
                                         ".xml) instead of --model (no attention maps)",
                        precision_note="--model only; attention maps always come from the faithful model.")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only; "
                   "0.0.0.0 = every network interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"default score threshold of /v1/detect and the page's slider (default {DEFAULT_THRESHOLD})")
    p.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"larger request bodies are refused with 413 (default {DEFAULT_MAX_UPLOAD_MB:g})")
    p.add_argument("--max_pixels", type=float, default=DEFAULT_MAX_PIXELS,
                   help=f"images with more pixels are refused with 413 before decoding (default {DEFAULT_MAX_PIXELS:.0e})")
    p.add_argument("--queue", type=int, default=DEFAULT_QUEUE,
                   help=f"requests admitted at once (--workers run, the rest wait); more → 503 (default {DEFAULT_QUEUE})")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help=f"inference threads (default {DEFAULT_WORKERS}: one model call at a time, right for a model that "
                        "fills the CPU or GPU; 2+ can help small models)")
    p.add_argument("--api_key", help=f"require this key (Authorization: Bearer KEY or X-API-Key) on /v1/* and /metrics; "
                   f"default: ${API_KEY_VARIABLE} when set")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="let web pages of ORIGIN (e.g. https://example.org) call the API; repeatable (default: none)")
    p.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default info)")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace):
    from ..serve.settings import ServeSettings, api_key_from_environment

    if args.max_pixels != int(args.max_pixels):
        raise ConfigError(f"--max_pixels must be a whole number, got {args.max_pixels}")
    return ServeSettings(
        max_upload_mb=args.max_upload_mb, max_pixels=int(args.max_pixels), queue=args.queue, workers=args.workers,
        api_key=api_key_from_environment(args.api_key), cors_origins=tuple(args.cors),
        model_name=str(args.model or args.onnx),
    )


def _detector(args: argparse.Namespace) -> Detector:
    if not 0 <= args.threshold < 1:
        raise ConfigError(f"--threshold must be in [0, 1), got {args.threshold}")
    return load_detector(args, threshold=args.threshold, batch_size=1)


def _check_address(host: str, port: int) -> None:
    """Refuse an address that cannot be bound (port in use, unknown host) in one line, before loading the model."""
    try:
        family, kind, _proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as err:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ModuleNotFoundError as err:
        raise MissingExtraError(f"detr serve needs the 'serve' extra ({err.name} is missing): "
                                "pip install 'torchdetr[serve]'") from None
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    settings = _settings(args)
    if args.host in WILDCARD_HOSTS and settings.api_key is None:
        log.warning("--host %s: the server is reachable from the network without an API key (--api_key)", args.host)
    _check_address(args.host, args.port)
    app = create_app(_detector(args), settings)
    log.info("serving %s: the page at http://%s:%d/ , API docs at /docs", settings.model_name,
             f"[{args.host}]" if ":" in args.host else args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, proxy_headers=False,
                server_header=False, timeout_graceful_shutdown=5)
    return 0
