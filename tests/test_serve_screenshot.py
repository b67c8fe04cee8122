"""scripts/serve_screenshot.py without a browser: its server log is removed afterwards and the picture written whole."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "serve_screenshot.py"
spec = importlib.util.spec_from_file_location("serve_screenshot", SCRIPT)
serve_screenshot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_screenshot)


def test_the_log_is_removed_and_the_picture_written(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the script's temporary log goes
    monkeypatch.setattr(serve_screenshot, "CHROMIUM", Path(sys.executable))  # any existing file: capture is replaced
    monkeypatch.setattr(serve_screenshot, "running_server", lambda *args, **kwargs: contextlib.nullcontext())
    screenshot = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    screenshot.save(buffer, format="PNG")
    monkeypatch.setattr(serve_screenshot, "capture", lambda *args, **kwargs: buffer.getvalue())
    out = tmp_path / "docs" / "serve.png"
    out.parent.mkdir()
    monkeypatch.setattr(sys, "argv", ["serve_screenshot.py", "--model", "m.pth", "--image", "x.png", "--out", str(out)])
    serve_screenshot.main()
    assert list(scratch.iterdir()) == []  # the server's log does not stay behind
    picture = Image.open(out)
    assert picture.format == "PNG" and picture.size == (40, 30)
    assert [p.name for p in out.parent.iterdir()] == ["serve.png"]  # no temporary file beside it
