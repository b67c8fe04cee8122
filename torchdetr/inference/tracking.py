"""Track ids for detections across video frames, with ByteTrack from the ``trackers`` package.

The tracker (``trackers.ByteTrackTracker``: Kalman-filter motion + IoU Hungarian matching, a
maintained implementation; the ``track`` extra) sees each frame's detections and its time stamp, so
that frames skipped with ``every`` or dropped by a stream are bridged by the motion model. A track
keeps its id while it is unmatched for up to ``lost_seconds``; a new track gets an id once it has
been matched in ``confirm_frames`` consecutive frames (before that its detections have no id).

ByteTrack's second stage matches low-scoring detections to tracks it would otherwise lose; here
every detection passed to it is above the detector's threshold, and that threshold is also the
tracker's "high score" and track-activation threshold, so every reported detection can start a
track.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ConfigError, MissingExtraError
from .detection import Detection
from .video import FramePrediction

DEFAULT_LOST_SECONDS = 1.0  # keep an unmatched track this long (ByteTrack's default: 30 frames at 30 fps)
DEFAULT_CONFIRM_FRAMES = 2  # consecutive matches before a new track gets an id (ByteTrack's default)
DEFAULT_MATCH_IOU = 0.1  # least IoU between a track's predicted box and a detection to match them (ByteTrack's)
_TRACKER_FRAME_RATE = 30  # the rate in which trackers counts its lost-track buffer


def _import_trackers() -> Any:
    try:
        import trackers
    except ModuleNotFoundError as err:
        raise MissingExtraError(f"tracking needs the trackers package ({err.name} is missing): "
                                "pip install 'torchdetr[track]'") from None
    return trackers


class Tracker:
    """ByteTrack over ``Detection`` records; ``update`` gives each detection of a frame its track id (or None).

    ``frame_rate``: frames per second of the frames given (after skipping), used when no time
    stamps are passed. ``threshold``: the detection score above which detections start tracks
    (the detector's threshold).
    """

    def __init__(
        self,
        frame_rate: float,
        threshold: float,
        *,
        lost_seconds: float = DEFAULT_LOST_SECONDS,
        confirm_frames: int = DEFAULT_CONFIRM_FRAMES,
        match_iou: float = DEFAULT_MATCH_IOU,
    ) -> None:
        if frame_rate <= 0:
            raise ConfigError(f"frame rate must be positive, got {frame_rate}")
        if lost_seconds < 0:
            raise ConfigError(f"lost_seconds must be >= 0, got {lost_seconds}")
        if confirm_frames < 1:
            raise ConfigError(f"confirm_frames must be >= 1, got {confirm_frames}")
        trackers = _import_trackers()
        import supervision  # a dependency of trackers

        self._supervision = supervision
        self._tracker = trackers.ByteTrackTracker(
            lost_track_buffer=round(lost_seconds * _TRACKER_FRAME_RATE),
            frame_rate=float(frame_rate),
            track_activation_threshold=threshold,
            high_conf_det_threshold=threshold,
            minimum_consecutive_frames=confirm_frames,
            minimum_iou_threshold=match_iou,
        )

    def update(self, detections: Sequence[Detection], time: float | None = None) -> list[int | None]:
        """Track ids of one frame's ``detections`` (same order); ``time`` in seconds (None: one frame period later)."""
        sv = self._supervision
        if detections:
            boxes = np.array([d.box for d in detections], dtype=np.float32).reshape(-1, 4)
            given = sv.Detections(
                xyxy=boxes,
                confidence=np.array([d.score for d in detections], dtype=np.float32),
                class_id=np.array([d.label for d in detections], dtype=int),
                data={"position": np.arange(len(detections))},
            )
        else:
            given = sv.Detections.empty()
        tracked = self._tracker.update(given, timestamp=time)
        ids: list[int | None] = [None] * len(detections)
        if len(tracked):
            for position, track_id in zip(tracked.data["position"].tolist(), tracked.tracker_id.tolist()):
                ids[position] = int(track_id) if track_id >= 0 else None
        return ids


def track_predictions(predictions: Iterable[FramePrediction], tracker: Tracker) -> Iterator[FramePrediction]:
    """The same frame predictions with ``track_ids`` filled in by ``tracker``, frame by frame."""
    for prediction in predictions:
        yield replace(prediction, track_ids=tracker.update(prediction.detections, prediction.time))
