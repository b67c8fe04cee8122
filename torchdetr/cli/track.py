"""``detr track``: detect and track objects in videos, streams and cameras → ``NAME.mp4`` + ``NAME.jsonl``.

Each frame's detections get track ids from ByteTrack (``inference/tracking.py``, the ``track``
extra); the output video shows every box with ``name #id score`` and each track's recent trail,
and every detection in the JSON lines carries ``track_id`` (null until its track is confirmed).
Inputs, outputs, ``--every`` and tiling as in ``detr predict`` (``cli/video_outputs.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, InputFileError, MissingFileError
from ..inference.video import find_video_files
from .model_choice import add_model_arguments, load_detector
from .video_outputs import (
    add_tiling_arguments,
    add_video_arguments,
    check_every,
    run_videos,
    split_video_inputs,
    tiling_from_args,
)


def add_parser(subparsers) -> None:
    from ..inference.tracking import DEFAULT_LOST_SECONDS

    p = subparsers.add_parser(
        "track", help="detect and track objects in videos: NAME.mp4 with ids and trails + NAME.jsonl with track_id",
        description="Detect objects in videos, streams or cameras and give them track ids (ByteTrack): NAME.mp4 with "
                    "boxes, ids and trails drawn, and NAME.jsonl with one line per frame (detections with track_id).",
    )
    p.add_argument("inputs", nargs="+", metavar="VIDEOS",
                   help="video files, folders of videos, stream URLs (rtsp://, http://…) or camera indices (0, 1…)")
    add_model_arguments(p)
    p.add_argument("--output", required=True, metavar="DIR", help="folder for NAME.mp4 and NAME.jsonl per video")
    p.add_argument("--threshold", type=float, default=0.7,
                   help="keep (and track) detections whose best class probability exceeds this (default 0.7)")
    p.add_argument("--batch_size", type=int, default=4, help="frames per forward pass (default 4)")
    p.add_argument("--image_size", type=int, help="shortest side the model sees (default: the model's)")
    p.add_argument("--max_size", type=int, help="longest side the model sees (default: the model's)")
    p.add_argument("--lost_seconds", type=float, default=DEFAULT_LOST_SECONDS,
                   help=f"keep a track this long without a matching detection (default {DEFAULT_LOST_SECONDS:g} s)")
    p.add_argument("--overwrite", action="store_true", help="replace NAME.mp4 / NAME.jsonl of an earlier run")
    add_tiling_arguments(p)
    add_video_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be positive, got {args.batch_size}")
    if not 0 <= args.threshold < 1:
        raise ConfigError(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.lost_seconds < 0:
        raise ConfigError(f"--lost_seconds must be >= 0, got {args.lost_seconds}")
    tiling_from_args(args)
    check_every(args)
    sources, others = split_video_inputs(args.inputs)
    for item in others:
        path = Path(item)
        if not path.exists():
            raise MissingFileError(f"input not found: {item}")
        if not (path.is_dir() and find_video_files(path)):
            raise InputFileError(f"not a video, a folder of videos, a stream URL or a camera index: {item}")
    totals = run_videos(args, lambda: load_detector(args, threshold=args.threshold, batch_size=args.batch_size,
                                                    image_size=args.image_size, max_size=args.max_size),
                        sources, tracking=True)
    return 0 if totals.frames else 1
