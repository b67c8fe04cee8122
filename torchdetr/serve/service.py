"""The model calls behind the routes, run in the worker thread: decode, detect, capture attention.

``DetectionService`` wraps a ``torchdetr.inference.detector.Detector`` (the public inference API,
so the server's detections are ``detr predict``'s) and builds the JSON answers there too, so that
the event loop only moves bytes. Attention maps of the last few images are kept (by the SHA-256 of
the upload) because the web page asks again for every click on a pixel.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..inference.attention import AttentionMaps
from ..inference.detector import Detection, Detector
from ..viz.draw import PALETTE
from .heatmaps import grid_extent, map_json
from .images import UNPROCESSABLE, InspectedUpload, UploadError, decode_upload
from .metrics import ServeMetrics
from .settings import ServeSettings
from .worker import ModelAccess

ALL_QUERIES = 0.0  # threshold that keeps every query (attention maps are computed once, filtered per request)


@dataclass(frozen=True)
class Point:
    """A pixel of the uploaded image (x to the right, y down), EXIF orientation applied."""

    x: float
    y: float


class AttentionCache:
    """The attention maps of the ``capacity`` most recently used uploads (least recently used dropped first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._maps: OrderedDict[str, AttentionMaps] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> AttentionMaps | None:
        with self._lock:
            maps = self._maps.get(digest)
            if maps is not None:
                self._maps.move_to_end(digest)
            return maps

    def put(self, digest: str, maps: AttentionMaps) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._maps[digest] = maps
            self._maps.move_to_end(digest)
            while len(self._maps) > self.capacity:
                self._maps.popitem(last=False)


def detection_json(detection: Detection) -> dict:
    """A ``Detection`` as the API's ``DetectionOut`` dict."""
    return {"box": list(detection.box), "score": detection.score, "label": detection.label, "name": detection.name,
            "query": detection.query}


class DetectionService:
    """Detections and attention maps of uploaded images (every method runs in an inference thread)."""

    def __init__(self, detector: Detector, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.detector = detector
        self.settings = settings
        self.metrics = metrics
        self.cache = AttentionCache(settings.attention_cache)
        self.access = ModelAccess()  # detections side by side; an attention capture (hooks) alone

    @property
    def supports_attention(self) -> bool:
        """Attention maps need the PyTorch model (an ONNX runner has no hooks)."""
        return isinstance(self.detector.model, nn.Module)

    def model_info(self) -> dict:
        """The ``ModelInfo`` dict of ``GET /v1/model``."""
        detector, settings = self.detector, self.settings
        if isinstance(detector.model, nn.Module):
            fast = getattr(detector.model, "compute_dtype", None)  # an optimized model (--precision fp32/bf16/fp16)
            runtime = "pytorch" if fast is None else f"pytorch ({detector.precision} fast path)"
            parameter = next(detector.model.parameters(), None)
            dtype = fast or (parameter.dtype if parameter is not None else torch.float32)
            precision = str(dtype).removeprefix("torch.")
        else:
            runtime, precision = getattr(detector.model, "runtime_name", "onnxruntime"), "exported"
        return {
            "name": settings.model_name,
            "runtime": runtime,
            "device": str(detector.device),
            "precision": precision,
            "attention": self.supports_attention,
            "threshold": detector.threshold,
            "input_size": {"shorter_side": detector.image_size, "max_size": detector.max_size},
            "classes": [{"id": k, "name": v} for k, v in sorted(detector.category_names.items())],
            "palette": ["#{:02x}{:02x}{:02x}".format(*color) for color in PALETTE],
            "limits": {"max_upload_mb": settings.max_upload_mb, "max_pixels": settings.max_pixels,
                       "queue": settings.queue, "workers": settings.workers},
        }

    def detect(self, upload: InspectedUpload, threshold: float | None) -> dict:
        """Decode and detect → the ``DetectResponse`` dict (``detector.detect`` on the upright RGB image)."""
        image = decode_upload(upload)
        start = time.perf_counter()
        with self.access.shared(), torch.inference_mode():
            detections = self.detector.detect([image], threshold)[0]
        self.metrics.inference.labels("detect").observe(time.perf_counter() - start)
        return {"image": {"width": image.width, "height": image.height},
                "detections": [detection_json(d) for d in detections], "model": self.settings.model_name}

    def attention(self, upload: InspectedUpload, threshold: float | None, points: Sequence[Point], decoder: bool,
                  direction: str, png: bool) -> dict:
        """Decoder attention of each detection above ``threshold`` and encoder attention at each point
        → the ``AttentionResponse`` dict. Points outside the image → 422."""
        maps = self._maps(upload)
        height, width = maps.image_size
        for point in points:
            if not (0 <= point.x < width and 0 <= point.y < height):
                raise UploadError(UNPROCESSABLE, f"point ({point.x:g}, {point.y:g}) is outside the image "
                                                 f"({width} x {height} pixels)")
        if points and maps.encoder is None:
            raise UploadError(UNPROCESSABLE, "this model has no encoder layers, so no encoder self-attention at points")
        threshold = self.detector.threshold if threshold is None else threshold
        extent = grid_extent(maps)
        detections = [
            detection_json(d) | {"decoder": map_json(maps.decoder[d.query], extent, png) if decoder else None}
            for d in maps.detections if d.score > threshold
        ]
        at_points = [
            {"x": p.x, "y": p.y, "cell": list(maps.feature_cell(p.x, p.y)),
             "encoder": map_json(maps.encoder_map(p.x, p.y, direction), extent, png)}
            for p in points
        ]
        return {
            "image": {"width": width, "height": height},
            "model": self.settings.model_name,
            "input_size": {"width": maps.input_size[1], "height": maps.input_size[0]},
            "feature_size": list(maps.feature_size),
            "stride": maps.stride,
            "direction": direction,
            "detections": detections,
            "points": at_points,
        }

    def _maps(self, upload: InspectedUpload) -> AttentionMaps:
        digest = hashlib.sha256(upload.data).hexdigest()  # the same picture sent again (the page, on every click)
        maps = self.cache.get(digest)
        if maps is None:
            image = decode_upload(upload)
            start = time.perf_counter()
            with self.access.exclusive():
                maps = self.detector.attention(image, threshold=ALL_QUERIES)
            self.metrics.inference.labels("attention").observe(time.perf_counter() - start)
            self.cache.put(digest, maps)
        return maps
