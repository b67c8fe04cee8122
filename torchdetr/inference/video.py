"""Videos, streams and cameras: decode frames, detect objects frame by frame, encode a video.

Video files and network streams (``rtsp://``, ``http(s)://``, …) are decoded with PyAV (FFmpeg;
the ``video`` extra); camera indices (``0``, ``1``, …) are opened with OpenCV (the ``camera``
extra), which finds cameras by index on Linux, macOS and Windows alike. Either way frames come out
as ``Frame`` records (index in the source, time stamp, RGB PIL image) one at a time: nothing
collects them, so memory stays flat however long the video is — at most one batch of frames is
held while it is predicted.

``predict_frames`` turns frames into ``FramePrediction`` records (frame, time, detections; track
ids once a tracker has seen them); ``VideoWriter`` encodes pictures into an H.264 MP4 at the
source's frame rate.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..errors import ConfigError, InputFileError, MissingExtraError, MissingFileError, OutputError
from .detection import Detection

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".ts", ".mts", ".3gp", ".ogv"})
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp"})
DEFAULT_FPS = Fraction(30)  # when a source states no frame rate (some streams and cameras)
OPEN_TIMEOUT_S = 10.0  # connecting to / reading from a stream
OUTPUT_CODEC = "libx264"
OUTPUT_CRF = "18"  # x264 constant quality: visually lossless
FPS_DENOMINATOR_LIMIT = 1001 * 1000  # keeps NTSC rates (30000/1001) exact
_CAMERA_INDEX = re.compile(r"^\d{1,3}$")
SourceKind = Literal["file", "stream", "camera"]
DetectBatch = Callable[[Sequence[Image.Image]], list[list[Detection]]]


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoSource:
    """Where frames come from: a video file, a stream URL or a camera index; ``name`` names its outputs."""

    location: str
    kind: SourceKind
    name: str

    def __str__(self) -> str:
        return f"camera {self.location}" if self.kind == "camera" else self.location


def is_video_file(path: str | Path) -> bool:
    """Whether ``path`` has a video suffix (``VIDEO_SUFFIXES``)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_stream_url(text: str) -> bool:
    """Whether ``text`` is a URL of a streaming scheme (``STREAM_SCHEMES``)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in STREAM_SCHEMES


def is_camera_index(text: str) -> bool:
    """Whether ``text`` is a camera index (``0``, ``1``, …) rather than a file of that name."""
    return bool(_CAMERA_INDEX.match(text)) and not Path(text).exists()


def find_video_files(folder: str | Path) -> list[Path]:
    """Video files under ``folder`` (recursively, hidden entries skipped), sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and is_video_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _stream_name(url: str) -> str:
    """A file-name stem for a stream: the last path component of the URL, else its host."""
    rest = url.partition("://")[2].split("?")[0].rstrip("/")
    host, _, path = rest.partition("/")
    stem = Path(path).stem if path else host.split("@")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "stream"


def video_source(item: str | Path, name: str | None = None) -> VideoSource:
    """A ``VideoSource`` for a camera index, a stream URL or a video file path (``name``: its outputs' stem)."""
    text = str(item)
    if is_camera_index(text):
        return VideoSource(text, "camera", name or f"camera{text}")
    if is_stream_url(text):
        return VideoSource(text, "stream", name or _stream_name(text))
    return VideoSource(text, "file", name or Path(text).stem)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``index`` in the source (0-based, every frame counted), ``time`` in seconds, RGB ``image``."""

    index: int
    time: float
    image: Image.Image


def _import_av() -> Any:
    try:
        import av
    except ModuleNotFoundError as err:
        raise MissingExtraError(f"video input needs PyAV ({err.name} is missing): pip install 'torchdetr[video]'") from None
    return av


def _import_cv2() -> Any:
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")  # no per-backend warnings for a missing camera
    try:
        import cv2
    except ModuleNotFoundError as err:
        raise MissingExtraError(f"camera input needs OpenCV ({err.name} is missing): pip install 'torchdetr[camera]'") from None
    return cv2


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class VideoReader:
    """Frames of one ``VideoSource``, decoded one at a time; every ``every``-th frame is kept (0, N, 2N, …).

    ``rate`` is the source's frame rate (frames/s, exact fraction), ``num_frames`` its frame count
    when the container states one (None for streams and cameras). Opening fails with
    ``InputFileError`` (one line) for an unreadable file, an unreachable stream or a missing camera.
    Use as a context manager, or call ``close()``.
    """

    def __init__(self, source: VideoSource, every: int = 1) -> None:
        if every < 1:
            raise ConfigError(f"every must be a positive number of frames, got {every}")
        self.source = source
        self.every = every
        self._container: Any = None
        self._capture: Any = None
        if source.kind == "camera":
            self._open_camera()
        else:
            self._open_av()

    def _open_av(self) -> None:
        av = _import_av()
        stream_input = self.source.kind == "stream"
        if not stream_input and not Path(self.source.location).is_file():
            raise MissingFileError(f"{self.source}: video file not found")
        try:
            self._container = av.open(self.source.location, mode="r", timeout=OPEN_TIMEOUT_S if stream_input else None)
        except (av.FFmpegError, OSError, ValueError) as err:
            what = "cannot open stream" if stream_input else "not a readable video"
            raise InputFileError(f"{self.source}: {what} ({_one_line(err)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise InputFileError(f"{self.source}: no video stream in it")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self.rate = Fraction(rate).limit_denominator(FPS_DENOMINATOR_LIMIT) if rate else DEFAULT_FPS
        self.num_frames: int | None = stream.frames or None
        self.size = (stream.codec_context.width, stream.codec_context.height)

    def _open_camera(self) -> None:
        cv2 = _import_cv2()
        capture = cv2.VideoCapture(int(self.source.location))
        if not capture.isOpened():
            capture.release()
            raise InputFileError(f"{self.source}: no camera could be opened at index {self.source.location}")
        self._capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        stated = fps and math.isfinite(fps) and fps > 0
        self.rate = Fraction(fps).limit_denominator(FPS_DENOMINATOR_LIMIT) if stated else DEFAULT_FPS
        self.num_frames = None
        self.size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    @property
    def output_rate(self) -> Fraction:
        """Frame rate of the kept frames: the source's divided by ``every`` (same duration)."""
        return self.rate / self.every

    @property
    def num_output_frames(self) -> int | None:
        """How many frames are kept, when the source's frame count is known."""
        return None if self.num_frames is None else math.ceil(self.num_frames / self.every)

    def __iter__(self) -> Iterator[Frame]:
        frames = self._camera_frames() if self._capture is not None else self._av_frames()
        for frame in frames:
            if frame.index % self.every == 0:
                yield frame

    def _av_frames(self) -> Iterator[Frame]:
        av = _import_av()
        stream = self._container.streams.video[0]
        index = 0
        try:
            for decoded in self._container.decode(stream):
                seconds = decoded.time if decoded.time is not None else float(index / self.rate)
                # only kept frames are converted to RGB (the costly part for skipped ones)
                image = decoded.to_image() if index % self.every == 0 else None
                yield Frame(index, float(seconds), image)  # type: ignore[arg-type]
                index += 1
        except (av.FFmpegError, OSError) as err:
            raise InputFileError(f"{self.source}: cannot decode frame {index} ({_one_line(err)})") from None

    def _camera_frames(self) -> Iterator[Frame]:
        started = time.monotonic()
        index = 0
        while True:
            ok, bgr = self._capture.read()
            if not ok:
                return
            image = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])) if index % self.every == 0 else None
            yield Frame(index, time.monotonic() - started, image)  # type: ignore[arg-type]
            index += 1

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
class VideoWriter:
    """Encode RGB pictures into an H.264 MP4 (``OUTPUT_CODEC``, constant quality ``OUTPUT_CRF``) at ``rate`` frames/s.

    The size is taken from the first picture; every later one must match. Frame ``k`` is shown at
    ``k / rate`` seconds. Pictures of even width and height use yuv420p (plays everywhere), others
    yuv444p (x264's 4:2:0 needs even sides). Use as a context manager, or call ``close()`` — also
    after an interruption, so that what was written stays playable.
    """

    def __init__(self, path: str | Path, rate: Fraction | float) -> None:
        self.path = Path(path)
        self.rate = Fraction(rate).limit_denominator(FPS_DENOMINATOR_LIMIT)
        if self.rate <= 0:
            raise ConfigError(f"frame rate must be positive, got {rate}")
        self._av = _import_av()
        self._container: Any = None
        self._stream: Any = None
        self.frames_written = 0

    def _open(self, width: int, height: int) -> None:
        try:
            self._container = self._av.open(str(self.path), mode="w")
        except (self._av.FFmpegError, OSError) as err:
            raise OutputError(f"{self.path}: cannot write the video ({_one_line(err)})") from None
        stream = self._container.add_stream(OUTPUT_CODEC, rate=self.rate, options={"crf": OUTPUT_CRF})
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._stream = stream

    def write(self, image: Image.Image | np.ndarray) -> None:
        """Append one picture (RGB PIL image or uint8 [H, W, 3] array)."""
        array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if self._stream is None:
            self._open(array.shape[1], array.shape[0])
        elif (array.shape[1], array.shape[0]) != (self._stream.width, self._stream.height):
            raise OutputError(f"{self.path}: frame of size {array.shape[1]}x{array.shape[0]}, "
                             f"the video is {self._stream.width}x{self._stream.height}")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        frame.pts = self.frames_written
        frame.time_base = 1 / self.rate
        self._container.mux(self._stream.encode(frame))
        self.frames_written += 1

    def close(self) -> None:
        if self._container is not None:
            self._container.mux(self._stream.encode(None))  # flush the encoder
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_video(path: str | Path, frames: Iterable[Image.Image | np.ndarray], rate: Fraction | float) -> int:
    """Encode ``frames`` into ``path`` (``VideoWriter``); return the number of frames written."""
    with VideoWriter(path, rate) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written


# ----------------------------------------------------------------------------------------------
# Predicting
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FramePrediction:
    """Detections of one frame: ``index`` in the source, ``time`` (s), the RGB ``image``, ``detections``
    by decreasing score, and — after tracking — ``track_ids`` (one per detection; None for a detection
    that no confirmed track owns yet)."""

    index: int
    time: float
    image: Image.Image = field(repr=False)
    detections: list[Detection]
    track_ids: list[int | None] | None = None

    def to_json(self) -> dict[str, Any]:
        """One JSON line: ``frame``, ``time``, ``detections`` (box x1, y1, x2, y2 px, score, label, name, query[, track_id])."""
        detections = [d.to_dict() for d in self.detections]
        if self.track_ids is not None:
            detections = [d | {"track_id": track_id} for d, track_id in zip(detections, self.track_ids)]
        return {"frame": self.index, "time": round(self.time, 6), "detections": detections}


def predict_frames(frames: Iterable[Frame], detect: DetectBatch, batch_size: int) -> Iterator[FramePrediction]:
    """Detections of each frame, in order, ``batch_size`` frames per ``detect`` call (a batch is all that is held)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    batch: list[Frame] = []

    def flush() -> Iterator[FramePrediction]:
        results = detect([f.image for f in batch])
        for frame, detections in zip(batch, results):
            yield FramePrediction(frame.index, frame.time, frame.image, detections)
        batch.clear()

    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()
