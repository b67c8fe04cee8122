"""Make ``docs/images/serve.png``: the ``detr serve`` page with one image, its detections and the encoder attention at a point.

Starts ``detr serve --model MODEL`` on a free loopback port, opens the page in Debian's Chromium through
Playwright (no browser download), uploads ``--image``, sets the score threshold slider, clicks a point
(``--point X,Y`` in image pixels; by default the centre of the best detection's box) so the page shows the
encoder self-attention there, and writes a screenshot of the page (the window is sized so that the page has
little empty space), stored as a 256-colour PNG. The server is stopped afterwards.

The picture in docs/serve.md: the quick start's model on a held-out synthetic image
(``detr data synth --out synth_val --num_val 200 --seed 7 --image_size 128``)::

    python scripts/serve_screenshot.py --model outputs/quickstart/checkpoint_best.pth \\
        --image synth_val/images/val_000071.png --threshold 0.26 --point 9,84 --out docs/images/serve.png
"""

from __future__ import annotations

import argparse
import io
import mimetypes
import os
import sys
import tempfile
import time
from pathlib import Path

from torchdetr.atomic_write import replace_atomic
from torchdetr.serve.background import ServerStartError, free_port, running_server

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("TORCHDETR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ATTENTION_TIMEOUT_S = 120
PNG_COLOURS = 256  # the screenshot is stored as a palette PNG: a fraction of the RGB file's size


def serve_command(model: str, port: int, threshold: float) -> list[str]:
    """``detr serve`` of ``model`` on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "torchdetr.cli", "serve", "--model", model, "--port", str(port), "--device", "cpu",
            "--threshold", str(threshold), "--log_level", "warning"]


def wait_until(page, expression: str, timeout_s: float) -> None:
    """Poll a JS expression (the page's CSP forbids the string evaluation of page.wait_for_function)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(f"() => Boolean({expression})"):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {expression}")
        time.sleep(0.05)


def set_slider(page, selector: str, value: float) -> None:
    page.evaluate("([selector, value]) => { const s = document.querySelector(selector); s.value = value; "
                  "s.dispatchEvent(new Event('input')); }", [selector, value])


def capture(base: str, image: Path, threshold: float, point: tuple[float, float] | None, viewport: tuple[int, int],
            opacity: float) -> bytes:
    """The page's screenshot (PNG bytes) after uploading ``image`` and clicking ``point`` (image pixels)."""
    import httpx
    from playwright.sync_api import sync_playwright

    answer = httpx.post(base + "/v1/detect", params={"threshold": threshold}, content=image.read_bytes(),
                        headers={"content-type": mimetypes.guess_type(image.name)[0] or "image/png"},
                        timeout=120).json()
    width = answer["image"]["width"]
    if point is None:
        if not answer["detections"]:
            raise SystemExit(f"no detection above {threshold} in {image}: pass --point X,Y or a lower --threshold")
        x1, y1, x2, y2 = max(answer["detections"], key=lambda d: d["score"])["box"]
        point = ((x1 + x2) / 2, (y1 + y2) / 2)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.goto(base + "/")
            page.wait_for_selector("#model-info b")
            page.set_input_files("#file", str(image))
            page.wait_for_selector(".det")
            set_slider(page, "#threshold", threshold)
            set_slider(page, "#opacity", opacity)
            canvas = page.locator("#box-canvas").bounding_box()
            scale = canvas["width"] / width
            page.mouse.click(canvas["x"] + point[0] * scale, canvas["y"] + point[1] * scale)
            wait_until(page, "document.querySelector('#heat-canvas').dataset.map.startsWith('encoder:') "
                             "&& document.querySelector('#busy').hidden", ATTENTION_TIMEOUT_S)
            page.mouse.move(0, 0)  # no hover state in the picture
            return page.screenshot(full_page=False)
        finally:
            browser.close()


def main() -> None:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint file or official model name, as for detr serve")
    parser.add_argument("--image", type=Path, required=True, help="the image to upload on the page")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "serve.png")
    parser.add_argument("--threshold", type=float, default=0.3, help="the score threshold slider's value")
    parser.add_argument("--point", help="X,Y in image pixels to click (default: the centre of the best detection)")
    parser.add_argument("--opacity", type=float, default=0.6, help="the heatmap opacity slider's value (0.2 to 1)")
    parser.add_argument("--viewport", default="1200x720", help="browser window WxH in CSS pixels: the whole page is captured")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing (apt-get install chromium, or set TORCHDETR_CHROMIUM)")
    point = tuple(float(v) for v in args.point.split(",")) if args.point else None
    viewport = tuple(int(v) for v in args.viewport.lower().split("x"))
    port = free_port()
    with tempfile.NamedTemporaryFile("w", prefix="serve_screenshot_", suffix=".log") as log:  # removed afterwards
        try:
            with running_server(serve_command(args.model, port, args.threshold), port, log=log, cwd=ROOT,
                                env=os.environ | {"PYTHONPATH": str(ROOT)}):
                png = capture(f"http://127.0.0.1:{port}", args.image, args.threshold, point, viewport, args.opacity)
        except ServerStartError as err:
            raise SystemExit(f"detr serve: {err}") from None
    picture = Image.open(io.BytesIO(png)).convert("RGB")
    palette = picture.quantize(PNG_COLOURS, method=Image.Quantize.MEDIANCUT)
    replace_atomic(args.out, lambda tmp: palette.save(tmp, format="PNG", optimize=True), what="screenshot")
    print(f"{args.out}: {picture.width} x {picture.height}, {args.out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
