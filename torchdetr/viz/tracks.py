"""Tracked detections drawn on video frames: boxes labelled with their track id, and each track's trail.

Boxes and labels are ``draw.draw_detections``' (class colours, ``"name #id score"``); a trail is the
polyline of the box centres of the track's last ``TRAIL_LENGTH`` frames, in the track's own colour,
drawn with Pillow's ``ImageDraw.line`` under the boxes (torchvision's ``draw_keypoints`` draws its
connecting lines in white only).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .draw import DrawableDetection, class_color, draw_detections, line_width_for

TRAIL_LENGTH = 30  # frames of history drawn behind each track
Point = tuple[float, float]


@dataclass(frozen=True)
class _Labelled:
    """A detection whose name carries its track id (what ``draw_detections`` prints)."""

    box: tuple[float, float, float, float]
    score: float
    label: int
    name: str


class Trails:
    """The recent box centres of each track (at most ``length``), forgotten ``length`` frames after its last sighting."""

    def __init__(self, length: int = TRAIL_LENGTH) -> None:
        self.length = length
        self._points: dict[int, deque[Point]] = {}
        self._last_seen: dict[int, int] = {}
        self._frame = 0

    def update(self, detections: Sequence[DrawableDetection], track_ids: Sequence[int | None]) -> None:
        """Add one frame: the centre of each tracked detection's box."""
        self._frame += 1
        for detection, track_id in zip(detections, track_ids):
            if track_id is None:
                continue
            x1, y1, x2, y2 = detection.box
            self._points.setdefault(track_id, deque(maxlen=self.length)).append(((x1 + x2) / 2, (y1 + y2) / 2))
            self._last_seen[track_id] = self._frame
        for track_id in [t for t, seen in self._last_seen.items() if self._frame - seen >= self.length]:
            del self._points[track_id], self._last_seen[track_id]

    def __getitem__(self, track_id: int) -> list[Point]:
        return list(self._points.get(track_id, ()))

    def __iter__(self):
        return iter(self._points.items())

    def __len__(self) -> int:
        return len(self._points)


def draw_tracks(
    image: Image.Image,
    detections: Sequence[DrawableDetection],
    track_ids: Sequence[int | None],
    trails: Trails | None = None,
) -> Image.Image:
    """A copy of ``image`` with each track's trail, then the boxes labelled ``"name #id score"`` (no ``#`` when untracked)."""
    canvas = image.convert("RGB")  # always a new image
    if trails is not None:
        pen = ImageDraw.Draw(canvas)
        for track_id, points in trails:
            if len(points) >= 2:
                pen.line(points, fill=class_color(track_id), width=line_width_for(canvas.size), joint="curve")
    labelled = [
        _Labelled(d.box, d.score, d.label, d.name if track_id is None else f"{d.name} #{track_id}")
        for d, track_id in zip(detections, track_ids)
    ]
    return draw_detections(canvas, labelled)
