"""``detr serve`` as a real process: HTTP limits over a socket, and the web page in a real browser.

The browser is Debian's ``chromium`` driven headless by Playwright (no browser download). Without
Chromium or Playwright the browser test is skipped, except where ``TORCHDETR_REQUIRE_BROWSER`` is set
(``.ci/run`` sets it): there a missing browser fails. Screenshots are written to
``test-artifacts/serve/`` (git-ignored).

Oracles: the API's own answers for the same image (boxes, attention maps) against the canvas pixels
the page drew; the slider's count against the scores; the downloaded JSON against ``/v1/detect``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy.stats import spearmanr

from torchdetr.serve.background import ServerStartError, free_port, running_server

from .conftest import REQUIRE_BROWSER_VARIABLE, ROOT, switched_on
from .test_predict import random_image, write_tiny_checkpoint

CHROMIUM = Path(os.environ.get("TORCHDETR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts" / "serve"
LAPTOP_VIEWPORT = {"width": 1366, "height": 768}
STARTUP_TIMEOUT_S = 120
UPLOAD_LIMIT_MB = 1


def browser_required() -> bool:
    return switched_on(REQUIRE_BROWSER_VARIABLE)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``detr serve`` on a free loopback port with a random tiny model and --threshold 0 (every query shown)."""
    folder = tmp_path_factory.mktemp("served")
    checkpoint = write_tiny_checkpoint(folder / "tiny.pth")
    port = free_port()
    command = [sys.executable, "-m", "torchdetr.cli", "serve", "--model", str(checkpoint), "--port", str(port),
               "--device", "cpu", "--threshold", "0", "--max_upload_mb", str(UPLOAD_LIMIT_MB), "--log_level", "warning"]
    with (folder / "server.log").open("w") as log:
        try:
            with running_server(command, port, log=log, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
                                startup_timeout_s=STARTUP_TIMEOUT_S):
                yield f"http://127.0.0.1:{port}"
        except ServerStartError as err:
            pytest.fail(f"detr serve: {err}")


def raw_request(port: int, head: bytes, body_chunks, read_timeout: float = 10) -> bytes:
    """Send ``head`` then the body chunks (stopping when the server closes), return what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed: it did not wait for the rest
                break
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
                if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                    break
        except OSError:
            pass
        return answer


def test_real_server_refuses_oversized_bodies_without_reading_them(server):
    port = int(server.rsplit(":", 1)[1])
    declared = raw_request(port, b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                                 b"Content-Length: 100000000000\r\n\r\n", [b"\x89PNG"])
    # 100 GB were declared, only 4 bytes sent: a server that waited for the body would answer nothing before
    # raw_request's socket timeout, and the answer would be empty (no clock is asserted)
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    chunk = 64 * 1024
    many = (f"{chunk:x}\r\n".encode() + b"\x00" * chunk + b"\r\n" for _ in range(10 * UPLOAD_LIMIT_MB * 16))
    chunked = raw_request(port, b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n", many)
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    assert httpx.get(server + "/healthz").json()["status"] == "ok"


# ------------------------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if browser_required():
            pytest.fail(f"playwright is not installed and {REQUIRE_BROWSER_VARIABLE} is set (CI): pip install playwright")
        pytest.skip("playwright is not installed")
    if not CHROMIUM.exists():
        if browser_required():
            pytest.fail(f"{CHROMIUM} is missing and {REQUIRE_BROWSER_VARIABLE} is set (CI): apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def wait_until(page, expression: str, timeout_s: float = 60) -> None:
    """Poll a JS expression (page.wait_for_function evaluates strings, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(f"() => Boolean({expression})"):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def canvas_alpha(page, selector: str) -> np.ndarray:
    """[H, W] alpha channel of a canvas of the page."""
    width, height, data = page.evaluate(
        """(selector) => {
            const c = document.querySelector(selector);
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            const alpha = new Array(c.width * c.height);
            for (let i = 0; i < alpha.length; i++) alpha[i] = d[4 * i + 3];
            return [c.width, c.height, alpha];
        }""", selector)
    return np.asarray(data, dtype=np.uint8).reshape(height, width)


def assert_heatmap_follows(alpha: np.ndarray, attention_map: dict, scale: float, image_size: tuple[int, int]) -> None:
    """The heat canvas, sampled at the centre of each feature cell inside the image, ranks the cells as the map does."""
    height, width = attention_map["shape"]
    x2, y2 = attention_map["extent"][2:]
    cell_w, cell_h = x2 / width, y2 / height
    values, drawn = [], []
    for i in range(height):
        for j in range(width):
            cx, cy = (j + 0.5) * cell_w, (i + 0.5) * cell_h
            if cx < image_size[0] and cy < image_size[1]:
                values.append(attention_map["values"][i][j])
                drawn.append(int(alpha[min(alpha.shape[0] - 1, int(cy * scale)), min(alpha.shape[1] - 1, int(cx * scale))]))
    values, drawn = np.asarray(values), np.asarray(drawn)
    assert drawn.max() > drawn.min(), "the heatmap is flat"
    assert spearmanr(values, drawn).statistic > 0.9
    assert values[drawn.argmax()] >= 0.9 * values.max()  # the brightest drawn cell is (one of) the most attended


def test_page_draws_boxes_filters_them_and_shows_attention(server, browser, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    picture = tmp_path / "picture.png"
    random_image(240, 320, seed=5).save(picture)
    data = picture.read_bytes()
    everything = httpx.post(server + "/v1/attention", params={"threshold": 0}, content=data,
                            headers={"content-type": "image/png"}, timeout=60).json()
    detections = everything["detections"]
    assert len(detections) == 10

    page = browser.new_page(viewport=LAPTOP_VIEWPORT, accept_downloads=True)
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.goto(server + "/")
    page.wait_for_selector("#model-info b")
    page.screenshot(path=str(ARTIFACTS / "0-empty.png"))
    page.set_input_files("#file", str(picture))
    page.wait_for_selector(".det")
    assert page.locator(".det").count() == 10  # --threshold 0: every query

    # boxes: drawn where the API says they are
    scale = page.evaluate("document.querySelector('#box-canvas').width") / 320
    boxes = canvas_alpha(page, "#box-canvas")
    assert boxes.shape[1] == round(320 * scale)
    for d in detections:
        x1, y1, x2, y2 = (v * scale for v in d["box"])
        left = boxes[int(y1 + (y2 - y1) * 0.6), max(0, int(x1) - 2): int(x1) + 3]  # below the label chip
        right = boxes[int(y1 + (y2 - y1) * 0.6), max(0, int(x2) - 2): int(x2) + 3]
        assert left.max() > 0 and right.max() > 0, d
    assert boxes[boxes.shape[0] // 2 - 2: boxes.shape[0] // 2 + 2].mean() < 255  # not all painted
    page.screenshot(path=str(ARTIFACTS / "1-detections.png"))

    # the slider filters without a request
    scores = sorted(d["score"] for d in detections)
    threshold = round((scores[5] + scores[6]) / 2, 2)
    kept = sum(s > threshold for s in scores)
    assert 0 < kept < 10
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.evaluate("(t) => { const s = document.querySelector('#threshold'); s.value = t; "
                  "s.dispatchEvent(new Event('input')); }", threshold)
    assert page.locator(".det").count() == kept
    assert (canvas_alpha(page, "#box-canvas") > 0).sum() < (boxes > 0).sum()
    assert requests == []
    assert f"{kept} of 10" in page.inner_text("#count")

    # a detection → its decoder cross-attention
    assert canvas_alpha(page, "#heat-canvas").max() == 0
    first = page.locator(".det").first
    query = int(first.get_attribute("data-query"))
    first.click()
    page.mouse.move(0, 0)  # leave the list: the pinned detection stays
    assert page.get_attribute("#heat-canvas", "data-map") == f"decoder:{query}"
    decoder = next(d for d in detections if d["query"] == query)["decoder"]
    assert_heatmap_follows(canvas_alpha(page, "#heat-canvas"), decoder, scale, (320, 240))
    assert query in [d["query"] for d in detections if d["score"] > threshold]
    page.screenshot(path=str(ARTIFACTS / "2-decoder-attention.png"))

    # a pixel → the encoder self-attention there (a point away from every label chip)
    corners = np.asarray([d["box"][:2] for d in detections if d["score"] > threshold])
    candidates = [(x, y) for x in range(20, 320, 20) for y in range(20, 240, 20)]
    x, y = max(candidates, key=lambda p: np.min(np.hypot(corners[:, 0] - p[0], corners[:, 1] - p[1] + 10)))
    canvas_box = page.locator("#box-canvas").bounding_box()
    css_scale = canvas_box["width"] / 320
    page.mouse.click(canvas_box["x"] + (x + 0.5) * css_scale, canvas_box["y"] + (y + 0.5) * css_scale)
    wait_until(page, "document.querySelector('#heat-canvas').dataset.map.startsWith('encoder:')")
    clicked = page.get_attribute("#heat-canvas", "data-map").removeprefix("encoder:")
    px, py = (float(v) for v in clicked.split(","))
    assert abs(px - x) <= 1 and abs(py - y) <= 1
    encoder = httpx.post(server + "/v1/attention", params={"points": clicked, "decoder": "false"}, content=data,
                         headers={"content-type": "image/png"}, timeout=60).json()["points"][0]["encoder"]
    assert_heatmap_follows(canvas_alpha(page, "#heat-canvas"), encoder, scale, (320, 240))
    page.screenshot(path=str(ARTIFACTS / "3-encoder-attention.png"))

    # download JSON = /v1/detect at the slider's threshold
    with page.expect_download() as download:
        page.click("#download")
    downloaded = json.loads(Path(download.value.path()).read_text())
    api = httpx.post(server + "/v1/detect", params={"threshold": threshold}, content=data,
                     headers={"content-type": "image/png"}, timeout=60).json()
    assert downloaded["threshold"] == threshold and downloaded["image"] == api["image"]
    assert [(d["query"], d["label"]) for d in downloaded["detections"]] == [(d["query"], d["label"]) for d in api["detections"]]
    for a, b in zip(downloaded["detections"], api["detections"]):
        assert a["box"] == pytest.approx(b["box"], abs=1e-4) and a["score"] == pytest.approx(b["score"], abs=1e-4)

    page.keyboard.press("Escape")
    assert canvas_alpha(page, "#heat-canvas").max() == 0
    assert problems == []
    page.close()
