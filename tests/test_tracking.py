"""Tracking (inference/tracking.py, viz/tracks.py, ``detr track``): identities on the synthetic moving-shapes
clip are stable — ID switches counted by the ``trackers`` package's CLEAR metrics (TrackEval's definition)
— for ground-truth boxes with missed detections and dropped frames, and end to end with a planted detector;
ids and trails are drawn."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from .conftest import require_package

require_package("trackers", reason="the track extra is not installed")
require_package("av", reason="the video extra (PyAV) is not installed")

from trackers.eval import compute_clear_metrics  # noqa: E402

import torchdetr.cli.track as track_cli  # noqa: E402
from torchdetr import Detector  # noqa: E402
from torchdetr.cli import main  # noqa: E402
from torchdetr.data.synthetic_video import SyntheticVideo, TrackedBox  # noqa: E402
from torchdetr.inference.detection import Detection  # noqa: E402
from torchdetr.inference.tracking import Tracker  # noqa: E402
from torchdetr.inference.video import write_video  # noqa: E402
from torchdetr.viz.draw import class_color  # noqa: E402
from torchdetr.viz.tracks import Trails, draw_tracks  # noqa: E402

from .planted import BrightBlobModel  # noqa: E402

MATCH_IOU = 0.5


def id_switches(truth: list[list[TrackedBox]], boxes: list[list[tuple]], ids: list[list[int | None]]) -> dict:
    """CLEAR metrics (IDSW, TP, FN, FP) of tracked boxes against the ground truth, by ``trackers.eval``."""
    gt_ids, tracker_ids, similarities = [], [], []
    for frame_truth, frame_boxes, frame_ids in zip(truth, boxes, ids):
        tracked = [(b, i) for b, i in zip(frame_boxes, frame_ids) if i is not None]
        gt_ids.append(np.array([t.track_id for t in frame_truth], dtype=int))
        tracker_ids.append(np.array([i for _, i in tracked], dtype=int))
        gt_boxes = torch.tensor([t.box for t in frame_truth], dtype=torch.float64).reshape(-1, 4)
        found = torch.tensor([b for b, _ in tracked], dtype=torch.float64).reshape(-1, 4)
        similarities.append(box_iou(gt_boxes, found).numpy())
    return compute_clear_metrics(gt_ids, tracker_ids, similarities, threshold=MATCH_IOU)


def test_ground_truth_boxes_keep_their_identities_through_missed_detections_and_dropped_frames():
    video = SyntheticVideo(80, seed=5, size=(320, 240), num_objects=4)
    tracker = Tracker(frame_rate=video.rate, threshold=0.5)
    missed = {(2, k) for k in range(20, 26)} | {(3, k) for k in range(50, 53)}  # (object, frame): detector misses
    dropped = set(range(40, 44))  # whole frames never reach the tracker (stream hiccup): time jumps
    truth, boxes, ids = [], [], []
    for k in range(video.num_frames):
        if k in dropped:
            continue
        frame_truth = video.ground_truth(k)
        detections = [Detection(tuple(map(float, t.box)), 0.9, t.category_id, "shape", 0)
                      for t in frame_truth if (t.track_id, k) not in missed]
        frame_ids = tracker.update(detections, time=k / video.rate)
        truth.append(frame_truth)
        boxes.append([d.box for d in detections])
        ids.append(frame_ids)
    metrics = id_switches(truth, boxes, ids)
    assert metrics["IDSW"] == 0 and metrics["CLR_FP"] == 0
    assert metrics["CLR_FN"] == len(missed) + len(video.shapes)  # only the misses and the unconfirmed first frame
    # one track id per object over the whole clip (also across the gaps)
    owners: dict[int, set[int]] = {}
    for frame_truth, frame_boxes, frame_ids in zip(truth, boxes, ids):
        for box, track_id in zip(frame_boxes, frame_ids):
            if track_id is not None:
                owner = next(t.track_id for t in frame_truth if tuple(map(float, t.box)) == box)
                owners.setdefault(owner, set()).add(track_id)
    assert sorted(owners) == [1, 2, 3, 4] and all(len(found) == 1 for found in owners.values())
    assert len({next(iter(found)) for found in owners.values()}) == 4


def test_track_command_with_a_planted_detector_writes_stable_track_ids_and_draws_them(tmp_path, monkeypatch):
    video = SyntheticVideo(30, seed=2, size=(160, 120), num_objects=3, rate=25)
    clip = tmp_path / "shapes.mp4"
    write_video(clip, video.frames(), video.rate)
    detector = Detector(BrightBlobModel(level=160), {1: "shape"}, threshold=0.5, image_size=120, max_size=160)
    monkeypatch.setattr(track_cli, "load_detector", lambda args, **options: detector)
    out = tmp_path / "out"
    assert main(["track", str(clip), "--model", "planted", "--output", str(out), "--device", "cpu"]) == 0
    with __import__("av").open(str(out / "shapes.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 30 and container.streams.video[0].average_rate == 25
    lines = [json.loads(line) for line in (out / "shapes.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(30))
    assert all(len(line["detections"]) == 3 for line in lines)  # the planted detector finds every shape
    assert all(d["track_id"] is not None for line in lines[1:] for d in line["detections"])  # confirmed from frame 1
    metrics = id_switches([video.ground_truth(k) for k in range(30)],
                          [[tuple(d["box"]) for d in line["detections"]] for line in lines],
                          [[d["track_id"] for d in line["detections"]] for line in lines])
    assert metrics["IDSW"] == 0 and metrics["CLR_FP"] == 0 and metrics["CLR_FN"] == 3
    assert len({d["track_id"] for line in lines for d in line["detections"]} - {None}) == 3


def test_trails_and_ids_are_drawn():
    image = Image.new("RGB", (200, 120))
    detection = Detection((120.0, 40.0, 160.0, 80.0), 0.9, 1, "shape", 0)
    trails = Trails(length=5)
    for x in (40, 60, 80, 100, 140):  # centres move right along y = 60; the first drops out of a 5-long trail
        trails.update([Detection((x - 20.0, 40.0, x + 20.0, 80.0), 0.9, 1, "shape", 0)], [7])
    trails.update([detection], [7])
    assert trails[7] == [(60.0, 60.0), (80.0, 60.0), (100.0, 60.0), (140.0, 60.0), (140.0, 60.0)]
    drawn = np.asarray(draw_tracks(image, [detection], [7], trails)).astype(int)
    assert tuple(drawn[60, 70]) == class_color(7) and tuple(drawn[60, 90]) == class_color(7)  # the trail's segments
    assert tuple(drawn[60, 50]) == (0, 0, 0)  # before the trail's oldest point
    without_id = np.asarray(draw_tracks(image, [detection], [None])).astype(int)
    labels_differ = np.abs(drawn - without_id).sum(axis=2) > 0
    assert labels_differ[:40].any()  # the label "shape #7 0.90" above the box differs from "shape 0.90"
    for _ in range(5):
        trails.update([], [])
    assert len(trails) == 0  # forgotten after `length` frames unseen
