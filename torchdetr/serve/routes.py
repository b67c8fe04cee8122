"""The endpoints: ``POST /v1/detect``, ``POST /v1/attention``, ``GET /v1/model``, ``GET /healthz``,
``GET /metrics`` and the web page at ``/``.

An image comes as the multipart field ``image`` or as the raw body with an ``image/*`` content type;
nothing in a request names a file on the server. Every refusal is JSON ``{"detail": "..."}``.
"""

from __future__ import annotations

import hmac
import re
from importlib.resources import files
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response

from .images import UNPROCESSABLE, UNSUPPORTED_MEDIA_TYPE, InspectedUpload, UploadError, inspect_upload
from .schemas import AttentionResponse, DetectResponse, Health, ModelInfo
from .service import DetectionService, Point
from .worker import InferenceQueue

IMAGE_FIELD = "image"
MAX_FORM_FIELDS = 8  # a detect/attention form has one file; a few text fields are tolerated
STATIC_DIR = files(__package__) / "static"
PAGE_SECURITY_HEADERS = {
    # the page loads nothing from elsewhere (no CDN); uploads are shown from blob: URLs, heatmaps from data: URLs
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_POINTS = 64  # encoder maps per request (each is an h x w grid in the answer)
POINT_PATTERN = re.compile(r"^\s*(-?\d+(?:\.\d*)?)\s*,\s*(-?\d+(?:\.\d*)?)\s*$")

ERROR_RESPONSES = {
    401: {"description": "missing or wrong API key (when the server has one)"},
    413: {"description": "body over --max_upload_mb, or image over --max_pixels (from its header, not decoded)"},
    415: {"description": "not multipart with an 'image' file nor an image/* body, or not an image"},
    422: {"description": "truncated image, unconvertible mode, empty body, bad parameter"},
    503: {"description": "queue full (--queue); see the Retry-After header"},
}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": [IMAGE_FIELD],
                                               "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def service(request: Request) -> DetectionService:
    return request.app.state.service


def queue(request: Request) -> InferenceQueue:
    return request.app.state.queue


def require_api_key(request: Request) -> None:
    """401 unless the server has no key or the request carries it (``Authorization: Bearer KEY`` or ``X-API-Key``)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization", "")
    if given is None and authorization.lower().startswith("bearer "):
        given = authorization[len("bearer "):].strip()
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                            headers={"WWW-Authenticate": "Bearer"})


async def read_image(request: Request) -> InspectedUpload:
    """The uploaded image's bytes (multipart field ``image`` or a raw ``image/*`` body), header checked."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
        try:
            field = form.get(IMAGE_FIELD)
            if field is None:
                raise UploadError(UNPROCESSABLE, f"multipart field '{IMAGE_FIELD}' is missing "
                                                 f"(fields sent: {', '.join(form.keys()) or 'none'})")
            if isinstance(field, str):
                raise UploadError(UNPROCESSABLE, f"multipart field '{IMAGE_FIELD}' must be a file upload, not text")
            data = await field.read()
        finally:
            await form.close()
    elif media_type.startswith("image/"):
        data = await request.body()
    else:
        raise UploadError(UNSUPPORTED_MEDIA_TYPE, f"content type '{media_type or 'none'}': send the image as the multipart "
                                                  f"field '{IMAGE_FIELD}' or as the raw body with an image/* content type")
    return inspect_upload(data, request.app.state.settings.max_pixels)


def parse_points(values: list[str]) -> list[Point]:
    """``["x,y", ...]`` (several per value when separated by ';') → points; a malformed one → 422."""
    points = []
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(";"))):
            match = POINT_PATTERN.match(item)
            if match is None:
                raise UploadError(UNPROCESSABLE, f"points: {item!r} is not 'x,y' (pixel coordinates, e.g. points=120,80)")
            points.append(Point(float(match.group(1)), float(match.group(2))))
    if len(points) > MAX_POINTS:
        raise UploadError(UNPROCESSABLE, f"points: {len(points)} given, at most {MAX_POINTS} per request")
    return points


Threshold = Annotated[float | None, Query(ge=0, lt=1, description="keep detections scoring above this "
                                                                   "(default: the server's --threshold)")]

api = APIRouter(dependencies=[Depends(require_api_key)])
public = APIRouter()


@api.post("/v1/detect", response_model=DetectResponse, responses=ERROR_RESPONSES, openapi_extra=IMAGE_BODY,
          summary="Detect objects in an image")
async def detect(request: Request, threshold: Threshold = None) -> dict:
    with queue(request).admit():
        upload = await read_image(request)
        return await queue(request).run(service(request).detect, upload, threshold)


@api.post("/v1/attention", response_model=AttentionResponse, responses=ERROR_RESPONSES | {
    501: {"description": "the server runs an exported (ONNX) model: no attention maps"}},
          openapi_extra=IMAGE_BODY, summary="Decoder attention of each detection, encoder attention at points")
async def attention(
    request: Request,
    threshold: Threshold = None,
    points: Annotated[list[str], Query(description="pixel 'x,y' (repeat, or separate with ';') whose encoder "
                                                   "self-attention to return")] = [],  # noqa: B006 (FastAPI query list)
    decoder: Annotated[bool, Query(description="include each detection's decoder cross-attention map")] = True,
    direction: Annotated[Literal["to", "from"], Query(description="encoder maps: 'to' = how much each cell attends "
                                                                   "to the point (the notebook's view), 'from' = where "
                                                                   "the point attends")] = "to",
    png: Annotated[bool, Query(description="add a PNG heatmap (data URL) to every map")] = False,
) -> dict:
    if not service(request).supports_attention:
        raise HTTPException(501, "attention maps need a PyTorch model; this server runs an exported (ONNX) model")
    wanted = parse_points(points)
    with queue(request).admit():
        upload = await read_image(request)
        return await queue(request).run(service(request).attention, upload, threshold, wanted, decoder, direction, png)


@api.get("/v1/model", response_model=ModelInfo, summary="The model: name, classes, input size, precision, limits")
async def model_info(request: Request) -> dict:
    return service(request).model_info()


@public.get("/healthz", response_model=Health, summary="Liveness: answers while inference runs")
async def healthz(request: Request) -> dict:
    return {"status": "ok", "queue_depth": queue(request).depth}


@api.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


@public.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(str(STATIC_DIR / "index.html"), headers=PAGE_SECURITY_HEADERS)
