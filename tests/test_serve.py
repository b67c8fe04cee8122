"""``torchdetr.serve``: every route and every bad input, through FastAPI's TestClient.

Oracles: ``detr predict`` and ``Detector`` on the same file (detections), Pillow's own EXIF transpose
and numpy conversions written here (image modes), hand-made PNG headers (decompression bombs),
prometheus-client's parser (metrics), closed forms (attention sums)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from torchdetr import Detector
from torchdetr.cli import main
from torchdetr.serve import ServeSettings, create_app
from torchdetr.serve.limits import BodySizeLimit
from torchdetr.serve.settings import API_KEY_VARIABLE, api_key_from_environment

from .conftest import require_package
from .test_predict import NAMES, random_image, write_tiny_checkpoint

require_package("fastapi")
with warnings.catch_warnings():  # newer Starlette asks for httpx2; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PICTURE_SEED = 3


def png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with a tiny (incomplete) pixel stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.pth")


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return random_image(96, 128, seed=PICTURE_SEED)


@pytest.fixture(scope="module")
def threshold(checkpoint, picture) -> float:
    """Half-way between the 5th and 6th best scores of ``picture``: some queries above, some below."""
    scores = sorted((d.score for d in Detector.from_pretrained(checkpoint, "cpu", threshold=0).predict(picture)), reverse=True)
    return (scores[4] + scores[5]) / 2


@pytest.fixture(scope="module")
def detector(checkpoint, threshold) -> Detector:
    return Detector.from_pretrained(checkpoint, device="cpu", threshold=threshold, batch_size=1)


@pytest.fixture(scope="module")
def client(detector):
    with TestClient(create_app(detector, ServeSettings(model_name="tiny"))) as test_client:
        yield test_client


def post_image(client, data: bytes, route: str = "/v1/detect", content_type: str = "image/png", **params):
    return client.post(route, content=data, headers={"content-type": content_type}, params=params)


def expected(detector: Detector, image: Image.Image, threshold: float | None = None) -> list[dict]:
    return [d.to_dict() for d in detector.predict(image, threshold=threshold)]


def assert_same_detections(found: list[dict], wanted: list[dict], tol: float = 1e-4) -> None:
    assert [(d["query"], d["label"], d["name"]) for d in found] == [(d["query"], d["label"], d["name"]) for d in wanted]
    for a, b in zip(found, wanted):
        assert a["score"] == pytest.approx(b["score"], abs=tol)
        assert a["box"] == pytest.approx(list(b["box"]), abs=tol)


# ---------------------------------------------------------------------------------------------- detect
def test_detect_equals_detr_predict_on_the_same_file(tmp_path, client, checkpoint, threshold, picture):
    path = tmp_path / "picture.png"
    picture.save(path)
    out = tmp_path / "predict"
    assert main(["predict", str(path), "--model", str(checkpoint), "--output", str(out), "--threshold", str(threshold),
                 "--device", "cpu", "--no_render"]) == 0
    cli = json.loads((out / "predictions.json").read_text())
    multipart = client.post("/v1/detect", files={"image": ("picture.png", path.read_bytes(), "image/png")},
                            params={"threshold": threshold})
    raw = post_image(client, path.read_bytes(), threshold=threshold)
    assert multipart.status_code == raw.status_code == 200
    assert multipart.json() == raw.json()
    answer = raw.json()
    assert answer["image"] == {"width": 128, "height": 96} and answer["model"] == "tiny"
    found = answer["detections"]
    assert len(found) == 5, "the threshold keeps 5 of the 10 queries"
    assert len(found) == len(cli)
    # predictions.json rounds boxes to 0.01 px (COCO xywh) and scores to 1e-5: compare within that rounding + 1e-4
    for d, c in zip(found, sorted(cli, key=lambda c: -c["score"])):
        x1, y1, x2, y2 = d["box"]
        assert [x1, y1, x2 - x1, y2 - y1] == pytest.approx(c["bbox"], abs=0.005 + 1e-4)
        assert d["score"] == pytest.approx(c["score"], abs=5e-6 + 1e-4)
        assert d["label"] == c["category_id"]
    assert_same_detections(found, [d.to_dict() for d in Detector.from_pretrained(checkpoint, "cpu").predict(
        path, threshold=threshold)])


def test_threshold_default_query_and_bounds(client, detector, picture):
    data = png_bytes(picture)
    default = post_image(client, data).json()["detections"]
    assert len(default) == 5
    assert_same_detections(default, expected(detector, picture))
    everything = post_image(client, data, threshold=0).json()["detections"]
    assert len(everything) == 10 and [d["score"] for d in everything] == sorted((d["score"] for d in everything),
                                                                               reverse=True)
    higher = sorted(d["score"] for d in everything)[7]
    assert len(post_image(client, data, threshold=higher).json()["detections"]) == 2
    for bad in (1, 1.5, -0.1, "high"):
        response = post_image(client, data, threshold=bad)
        assert response.status_code == 422 and "threshold" in json.dumps(response.json()["detail"])


def test_exif_orientation_is_applied(tmp_path, client, detector, picture):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be turned 90° clockwise to be upright
    data = encoded(picture, "PNG", exif=exif)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert upright.size == (96, 128)
    answer = post_image(client, data, threshold=0.0).json()
    assert answer["image"] == {"width": 96, "height": 128}
    assert_same_detections(answer["detections"], expected(detector, upright, 0.0))
    path = tmp_path / "sideways.png"
    path.write_bytes(data)  # what detr predict reads from the same file
    assert_same_detections(answer["detections"], [d.to_dict() for d in detector.predict(path, threshold=0.0)])


def _composite_over_white(rgba: np.ndarray) -> Image.Image:
    alpha = rgba[..., 3:4].astype(np.float64) / 255
    return Image.fromarray(np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8))


def test_image_modes_are_converted_like_the_image_loader(client, detector, picture):
    rgb = np.asarray(picture)
    rng = np.random.default_rng(0)
    gray = np.asarray(picture.convert("L"))
    sixteen = (gray.astype(np.uint16) * 257 + rng.integers(0, 257, gray.shape)).astype(np.uint16)
    rgba = np.dstack([rgb, rng.integers(0, 256, gray.shape, dtype=np.uint8)])
    palette = picture.quantize(16)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = 0
    cases = {
        "grayscale": (Image.fromarray(gray, "L"), "PNG", Image.fromarray(np.dstack([gray] * 3))),
        "16-bit": (Image.fromarray(sixteen), "PNG",  # value x 255/65535, rounded
                   Image.fromarray(np.dstack([np.rint(sixteen * (255 / 65535)).astype(np.uint8)] * 3))),
        "alpha": (Image.fromarray(rgba, "RGBA"), "PNG", _composite_over_white(rgba)),
        "gray+alpha": (Image.fromarray(rgba[..., [0, 3]], "LA"), "PNG",
                       _composite_over_white(np.dstack([rgba[..., 0]] * 3 + [rgba[..., 3]]))),
        "palette": (palette, "PNG", palette.convert("RGB")),
        "palette+transparency": (palette_transparent, "PNG",
                                 _composite_over_white(np.asarray(palette_transparent.convert("RGBA")))),
        "CMYK": (picture.convert("CMYK"), "TIFF", picture.convert("CMYK").convert("RGB")),
    }
    for name, (image, fmt, oracle) in cases.items():
        data = encoded(image, fmt)
        assert Image.open(io.BytesIO(data)).mode == image.mode, name
        response = post_image(client, data, content_type=f"image/{fmt.lower()}", threshold=0.0)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["image"] == {"width": 128, "height": 96}, name
        assert_same_detections(response.json()["detections"], expected(detector, oracle, 0.0))


# ---------------------------------------------------------------------------------------------- refusals
def test_non_images_truncated_and_unconvertible_images_are_refused(client, picture):
    data = png_bytes(picture)
    cases = [
        (b"just some text", "image/png", 415, "not an image"),
        (data[: len(data) // 2], "image/png", 422, "cannot decode"),
        (b"", "image/png", 422, "no image data"),
        (data, "text/plain", 415, "content type 'text/plain'"),
        (data, "application/json", 415, "multipart field 'image'"),
        (encoded(Image.fromarray(np.full((8, 8), 7.5, np.float32)), "TIFF"), "image/tiff", 422, ""),
    ]
    for body, content_type, status, words in cases:
        response = post_image(client, body, content_type=content_type)
        assert response.status_code == status, (content_type, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and words in detail
    no_type = client.post("/v1/detect", content=data)
    assert no_type.status_code == 415


def test_multipart_needs_a_file_named_image(client, picture):
    data = png_bytes(picture)
    wrong_name = client.post("/v1/detect", files={"picture": ("a.png", data, "image/png")})
    assert wrong_name.status_code == 422 and "'image' is missing" in wrong_name.json()["detail"]
    as_text = client.post("/v1/detect", files={"image": (None, "/etc/passwd")})  # a text part
    assert as_text.status_code == 422 and "must be a file upload" in as_text.json()["detail"]
    two_files = client.post("/v1/detect", files=[("image", ("a.png", data, "image/png")),
                                                 ("image", ("b.png", data, "image/png"))])
    assert two_files.status_code == 400


def test_decompression_bomb_is_refused_from_its_header_without_decoding(detector, monkeypatch):
    import torchdetr.serve.service as service

    def must_not_decode(*_args):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(service, "decode_upload", must_not_decode)
    with TestClient(create_app(detector, ServeSettings(max_pixels=10_000)), raise_server_exceptions=True) as client:
        for width, height in ((40_000, 40_000), (101, 100)):
            bomb = png_header_only(width, height)
            assert len(bomb) < 200
            for route in ("/v1/detect", "/v1/attention"):
                response = post_image(client, bomb, route=route)
                assert response.status_code == 413, response.text
                assert "too large" in response.json()["detail"] or "--max_pixels" in response.json()["detail"]


def test_body_over_the_limit_is_refused_from_its_declared_length_and_while_streaming(detector, picture):
    limit_mb = 0.01
    limit = int(limit_mb * 2**20)
    with TestClient(create_app(detector, ServeSettings(max_upload_mb=limit_mb))) as client:
        assert post_image(client, png_bytes(random_image(8, 8))).status_code == 200
        big = b"\x00" * (limit + 1)
        declared = post_image(client, big)
        assert declared.status_code == 413 and f"{limit:,} bytes" in declared.json()["detail"]
        multipart = client.post("/v1/detect", files={"image": ("big.png", big, "image/png")})
        assert multipart.status_code == 413

        def chunks():  # no Content-Length (chunked): counted as it arrives (TestClient buffers it; see the ASGI test)
            for _ in range(100):
                yield b"\x00" * 1024

        streamed = client.post("/v1/detect", content=chunks(), headers={"content-type": "image/png"})
        assert streamed.status_code == 413


def test_body_limit_stops_reading_at_the_limit():
    """ASGI level: the middleware answers 413 after the chunk that passes the limit, not after the whole body."""
    received_by_app = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            received_by_app.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunk, total_chunks = 1000, 100
    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": b"x" * chunk, "more_body": len(pulled) < total_chunks}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", b"image/png")]}
    asyncio.run(BodySizeLimit(app, max_bytes=10 * chunk)(scope, receive, send))
    assert sent[0]["status"] == 413 and len(pulled) == 11  # 10 chunks fit; the 11th passes the limit
    declared = [(b"content-length", str(10**9).encode())]
    pulled.clear()
    sent.clear()
    asyncio.run(BodySizeLimit(app, max_bytes=10 * chunk)(scope | {"headers": declared}, receive, send))
    assert sent[0]["status"] == 413 and pulled == []  # refused from the header: not a byte read


def test_full_queue_answers_503_with_retry_after_and_healthz_answers_during_inference(detector, picture):
    app = create_app(detector, ServeSettings(queue=1))
    service = app.state.service
    started, release = threading.Event(), threading.Event()
    original = service.detect

    def slow_detect(*args):
        started.set()
        assert release.wait(30)
        return original(*args)

    service.detect = slow_detect
    data = png_bytes(picture)
    with TestClient(app) as client:
        results = {}
        first = threading.Thread(target=lambda: results.setdefault("first", post_image(client, data)))
        first.start()
        try:
            assert started.wait(30)
            health = client.get("/healthz")  # the event loop is free while the model runs
            assert health.status_code == 200 and health.json() == {"status": "ok", "queue_depth": 1}
            busy = post_image(client, data)
            assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
            assert "--queue" in busy.json()["detail"]
            metrics = client.get("/metrics").text
            assert "detr_queue_depth 1.0" in metrics
        finally:
            release.set()
            first.join(30)
        assert results["first"].status_code == 200
        assert client.get("/healthz").json()["queue_depth"] == 0
        assert post_image(client, data).status_code == 200


def test_workers_run_detections_side_by_side_and_attention_alone():
    from torchdetr.serve.worker import InferenceQueue, ModelAccess

    both = threading.Barrier(2, timeout=10)  # passes only when two jobs run at once
    queue = InferenceQueue(capacity=4, workers=2)

    async def two_jobs():
        return await asyncio.gather(queue.run(both.wait), queue.run(both.wait))

    assert sorted(asyncio.run(two_jobs())) == [0, 1]
    queue.close()

    access, events = ModelAccess(), []
    in_shared, release_shared = threading.Event(), threading.Event()

    def detection():
        with access.shared():
            events.append("shared start")
            in_shared.set()
            assert release_shared.wait(10)
            events.append("shared end")

    def capture():
        with access.exclusive():
            events.append("exclusive")

    reader = threading.Thread(target=detection)
    reader.start()
    assert in_shared.wait(10)
    writer = threading.Thread(target=capture)
    writer.start()
    time.sleep(0.2)  # the capture waits for the running detection (an ordering check, not a timing one)
    assert events == ["shared start"]
    release_shared.set()
    reader.join(10)
    writer.join(10)
    assert events == ["shared start", "shared end", "exclusive"]


def test_concurrent_requests_with_two_workers_get_their_own_answers(detector):
    images = [random_image(96, 128, seed=20 + i) for i in range(6)]
    wanted_maps = [detector.attention(image, threshold=0.0) for image in images]
    wanted_detections = [expected(detector, image) for image in images]
    # every pass lingers after its attention layers: another pass's layers then run while a capture is open
    slow = detector.model.transformer.register_forward_hook(lambda *_: time.sleep(0.05))
    with TestClient(create_app(detector, ServeSettings(workers=2, queue=16))) as client:
        answers: dict[tuple[str, int], dict] = {}

        def call(kind: str, index: int) -> None:
            route = "/v1/attention" if kind == "attention" else "/v1/detect"
            params = {"threshold": 0.0} if kind == "attention" else {}
            response = post_image(client, png_bytes(images[index]), route=route, **params)
            answers[kind, index] = response.json()

        threads = [threading.Thread(target=call, args=(kind, i)) for i in range(6) for kind in ("detect", "attention")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    slow.remove()
    for i in range(6):
        assert_same_detections(answers["detect", i]["detections"], wanted_detections[i])
        for d in answers["attention", i]["detections"]:  # a capture polluted by another image's pass would differ
            np.testing.assert_allclose(d["decoder"]["values"], wanted_maps[i].decoder[d["query"]].numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------- auth, CORS, files
def test_api_key_is_required_on_the_api_when_set(detector, picture):
    data = png_bytes(picture)
    with TestClient(create_app(detector, ServeSettings(api_key="s3cret"))) as client:
        for route in ("/v1/model", "/metrics"):
            response = client.get(route)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert post_image(client, data).status_code == 401
        assert client.post("/v1/detect", content=data, headers={"content-type": "image/png",
                                                                 "authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/detect", content=data, headers={"content-type": "image/png",
                                                                 "authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v1/attention", content=data, headers={"content-type": "image/png",
                                                                    "x-api-key": "s3cret"}).status_code == 200
        for public in ("/healthz", "/", "/static/app.js", "/openapi.json"):
            assert client.get(public).status_code == 200, public


def test_api_key_from_flag_or_environment(monkeypatch):
    monkeypatch.setenv(API_KEY_VARIABLE, "from-env")
    assert api_key_from_environment(None) == "from-env"
    assert api_key_from_environment("flag") == "flag"
    monkeypatch.setenv(API_KEY_VARIABLE, "")
    assert api_key_from_environment(None) is None


def test_cors_is_off_unless_an_origin_is_given(detector):
    preflight = {"origin": "https://example.org", "access-control-request-method": "POST"}
    with TestClient(create_app(detector)) as client:
        assert "access-control-allow-origin" not in client.options("/v1/detect", headers=preflight).headers
        assert "access-control-allow-origin" not in client.get("/v1/model", headers={"origin": "https://example.org"}).headers
    with TestClient(create_app(detector, ServeSettings(cors_origins=("https://example.org",)))) as client:
        allowed = client.options("/v1/detect", headers=preflight)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://example.org"
        other = client.get("/v1/model", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_no_request_can_name_a_server_file(client):
    for path in ("/static/../pyproject.toml", "/static/%2e%2e/%2e%2e/pyproject.toml", "/static/..%2f..%2fpyproject.toml",
                 "/static//etc/passwd", "/../../etc/passwd"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "root:" not in response.text and "[project]" not in response.text
    response = client.post("/v1/detect", params={"image": "/etc/passwd", "path": "/etc/passwd"})
    assert response.status_code == 415
    schema = client.get("/openapi.json").json()
    parameters = [p["name"] for route in schema["paths"].values() for op in route.values() for p in op.get("parameters", [])]
    assert set(parameters) <= {"threshold", "points", "decoder", "direction", "png"}


# ---------------------------------------------------------------------------------------------- model, health, metrics, page
def test_model_info(client, detector):
    info = client.get("/v1/model").json()
    assert info["name"] == "tiny" and info["runtime"] == "pytorch" and info["device"] == "cpu"
    assert info["precision"] == "float32" and info["attention"] is True and info["threshold"] == detector.threshold
    assert {c["id"]: c["name"] for c in info["classes"]} == NAMES
    assert info["input_size"] == {"shorter_side": 128, "max_size": detector.max_size}
    assert info["limits"] == {"max_upload_mb": 20.0, "max_pixels": 40_000_000, "queue": 16, "workers": 1}
    assert all(len(c) == 7 and c.startswith("#") for c in info["palette"])


def test_metrics_count_requests_by_route_and_status(detector, picture):
    from prometheus_client.parser import text_string_to_metric_families

    with TestClient(create_app(detector)) as client:
        post_image(client, png_bytes(picture))
        post_image(client, b"nope")
        client.get("/no/such/page")
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    counts = {(s.labels["route"], s.labels["status"]): s.value for s in families["detr_http_requests"].samples
              if s.name == "detr_http_requests_total"}
    assert counts[("/v1/detect", "200")] == 1 and counts[("/v1/detect", "415")] == 1
    assert counts[("unmatched", "404")] == 1
    latency = {s.labels["route"]: s.value for s in families["detr_http_request_duration_seconds"].samples
               if s.name.endswith("_count")}
    assert latency["/v1/detect"] == 2
    inference = [s.value for s in families["detr_inference_seconds"].samples if s.name.endswith("_count")]
    assert inference == [1]
    assert [s.value for s in families["detr_queue_depth"].samples] == [0]
    assert [s.value for s in families["detr_queue_capacity"].samples] == [16]


def test_page_and_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text  # nothing loaded from elsewhere (no CDN)
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/v1/detect", "/v1/attention", "/v1/model", "/healthz", "/metrics"}
    body = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "image/*"}


# ---------------------------------------------------------------------------------------------- attention
def test_attention_maps_equal_the_detectors(client, detector, picture):
    data = png_bytes(picture)
    points = [(5.0, 7.0), (120.5, 90.0)]
    response = post_image(client, data, route="/v1/attention", threshold=0.0, png="true",
                          points=[f"{x},{y}" for x, y in points])
    assert response.status_code == 200, response.text
    answer = response.json()
    maps = detector.attention(picture, threshold=0.0)
    h, w = maps.feature_size
    assert answer["feature_size"] == [h, w] and answer["stride"] == 32
    assert answer["input_size"] == {"width": maps.input_size[1], "height": maps.input_size[0]}
    assert_same_detections([{k: v for k, v in d.items() if k != "decoder"} for d in answer["detections"]],
                           [d.to_dict() for d in maps.detections])
    for d in answer["detections"]:
        decoder = d["decoder"]
        assert decoder["shape"] == [h, w]
        np.testing.assert_allclose(decoder["values"], maps.decoder[d["query"]].numpy(), atol=1e-6)
        assert sum(map(sum, decoder["values"])) == pytest.approx(1, abs=1e-4)  # softmax over the cells
        x1, y1, x2, y2 = decoder["extent"]
        assert (x1, y1) == (0, 0) and x2 >= 128 and y2 >= 96 and x2 - 128 < 32 * 128 / maps.input_size[1]
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(decoder["png"].split(",", 1)[1]))).convert("RGB"))
        assert png.shape == (h, w, 3)
        values = np.asarray(decoder["values"])  # viridis: the minimum dark purple, the maximum yellow
        assert tuple(png.reshape(-1, 3)[values.argmin()]) == (68, 1, 84)
        assert tuple(png.reshape(-1, 3)[values.argmax()]) == (253, 231, 37)
    for (x, y), at in zip(points, answer["points"]):
        assert (at["x"], at["y"]) == (x, y)
        assert at["cell"] == list(maps.feature_cell(x, y))
        np.testing.assert_allclose(at["encoder"]["values"], maps.encoder_map(x, y).numpy(), atol=1e-6)
    outgoing = post_image(client, data, route="/v1/attention", points="60,40", direction="from", decoder="false").json()
    assert sum(map(sum, outgoing["points"][0]["encoder"]["values"])) == pytest.approx(1, abs=1e-4)
    assert all(d["decoder"] is None for d in outgoing["detections"])
    assert len(outgoing["detections"]) == len(expected(detector, picture))  # the server's default threshold


def test_attention_refuses_bad_points(client, picture):
    data = png_bytes(picture)
    outside = post_image(client, data, route="/v1/attention", points="128,10")
    assert outside.status_code == 422 and "outside the image (128 x 96" in outside.json()["detail"]
    for bad in ("10", "a,b", "1,2,3", "/etc/passwd"):
        response = post_image(client, data, route="/v1/attention", points=bad)
        assert response.status_code == 422 and "is not 'x,y'" in response.json()["detail"], bad
    assert post_image(client, data, route="/v1/attention", direction="sideways").status_code == 422
    too_many = post_image(client, data, route="/v1/attention", points=";".join(["1,1"] * 65))
    assert too_many.status_code == 422 and "at most 64" in too_many.json()["detail"]


def test_an_exported_model_detects_but_has_no_attention(checkpoint, picture):
    pytorch = Detector.from_pretrained(checkpoint, device="cpu", threshold=0.0)
    module = pytorch.model

    def runner(samples):  # any callable with the model's contract (as an ONNX runner)
        with torch.inference_mode():
            return module(samples)

    exported = Detector(runner, pytorch.category_names, threshold=0.0, image_size=pytorch.image_size,
                        max_size=pytorch.max_size)
    with TestClient(create_app(exported)) as client:
        info = client.get("/v1/model").json()
        assert info["runtime"] == "onnxruntime" and info["attention"] is False
        data = png_bytes(picture)
        assert_same_detections(post_image(client, data).json()["detections"], expected(pytorch, picture, 0.0))
        response = post_image(client, data, route="/v1/attention")
        assert response.status_code == 501 and "ONNX" in response.json()["detail"]


def test_clicks_on_the_same_image_reuse_its_attention_maps(detector, picture):
    with TestClient(create_app(detector)) as client:
        data = png_bytes(picture)
        first = post_image(client, data, route="/v1/attention", points="10,10", decoder="false").json()
        again = post_image(client, data, route="/v1/attention", points="100,50", decoder="false").json()
        other = post_image(client, png_bytes(random_image(96, 128, seed=11)), route="/v1/attention").json()
        metrics = client.get("/metrics").text
    assert first["points"][0]["encoder"]["values"] != again["points"][0]["encoder"]["values"]
    assert other["detections"] != first["detections"]
    assert 'detr_inference_seconds_count{task="attention"} 2.0' in metrics  # 3 requests, 2 images, 2 forward passes


def test_attention_cache_keeps_the_latest_images():
    from torchdetr.serve.service import AttentionCache

    cache = AttentionCache(2)
    for key in "abc":
        cache.put(key, key)
        time.sleep(0)
    assert cache.get("a") is None and cache.get("b") == "b" and cache.get("c") == "c"
    cache.get("b")
    cache.put("d", "d")
    assert cache.get("c") is None and cache.get("b") == "b"
    AttentionCache(0).put("a", "a")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_refuses_bad_options_in_one_line(capsys, checkpoint):
    cases = [
        ([], "give either --model"),
        (["--model", str(checkpoint), "--queue", "0"], "--queue must be at least 1"),
        (["--model", str(checkpoint), "--workers", "0"], "--workers must be at least 1"),
        (["--model", str(checkpoint), "--workers", "3", "--queue", "2"], "--workers 3 is more than --queue 2"),
        (["--model", str(checkpoint), "--threshold", "1"], "--threshold must be in [0, 1)"),
        (["--model", str(checkpoint), "--max_upload_mb", "0"], "--max_upload_mb must be positive"),
        (["--model", str(checkpoint), "--port", "70000"], "--port must be in 0..65535"),
        (["--model", str(checkpoint), "--api_key", " "], "--api_key"),
    ]
    for flags, words in cases:
        assert main(["serve", *flags]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(checkpoint), "--port", str(port)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"--port {port}: cannot listen there" in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--model", "--onnx", "--host", "--port", "--device", "--threshold", "--max_upload_mb", "--max_pixels",
                 "--queue", "--workers", "--api_key", "--cors"):
        assert flag in help_text
