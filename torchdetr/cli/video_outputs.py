"""The video side of ``detr predict`` and ``detr track``, and the tiling flags of both.

Inputs that are videos — video files (``inference.video.VIDEO_SUFFIXES``), video files inside
folders, stream URLs (``rtsp://…``, ``http(s)://…``) and camera indices (``0``, ``1``, …) — are
split from the image inputs. Each video gives ``OUTPUT/NAME.mp4`` (the frames with boxes drawn:
the source's frame count and rate, or every N-th frame at rate/N with ``--every N``) and
``OUTPUT/NAME.jsonl`` (one line per predicted frame: frame index, time stamp, detections; with
``track_id`` when tracking). NAME is the file's stem (its path under the folder it was found in),
the stream's last path component, or ``cameraN``.

Frames are streamed: decoded, predicted ``--batch_size`` at a time, drawn, encoded and written, so
memory does not grow with the video's length. A progress bar shows frames/s. A video file that
cannot be read is reported and skipped (as unreadable images are); a stream that cannot be reached
or a camera that cannot be opened is an error (one line, exit 2). Ctrl-C stops a camera or stream
cleanly: what was written so far stays playable.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, InputFileError, OutputError
from ..output_paths import make_output_folder, refuse_earlier_work, refuse_inputs

if TYPE_CHECKING:
    from ..inference.detector import Detector
    from ..inference.tiles import Tiling
    from ..inference.video import VideoSource

VIDEO_OUTPUT_SUFFIX = ".mp4"
LINES_SUFFIX = ".jsonl"


# ----------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------
def add_tiling_arguments(p: argparse.ArgumentParser) -> None:
    """``--tile``, ``--overlap``, ``--tile_full``."""
    from ..inference.tiles import DEFAULT_OVERLAP

    p.add_argument("--tile", type=int, metavar="PX",
                   help="detect in overlapping PX x PX windows of each image/frame and merge them (class-aware NMS): "
                        "for small objects in large images (default: the whole image at once)")
    p.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP,
                   help=f"with --tile: fraction of a window shared with each neighbour (default {DEFAULT_OVERLAP})")
    p.add_argument("--tile_full", action="store_true",
                   help="with --tile: also detect in the whole image (resized as usual), for objects larger than a window")


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    """``--every``."""
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="videos: predict every N-th frame only; the output video then has those frames at rate/N (default 1)")


def tiling_from_args(args: argparse.Namespace) -> Tiling | None:
    """The ``Tiling`` the flags ask for, or None without ``--tile``."""
    from ..inference.tiles import DEFAULT_OVERLAP, Tiling

    if args.tile is None:
        if args.tile_full or args.overlap != DEFAULT_OVERLAP:
            raise ConfigError("--overlap and --tile_full need --tile PX")
        return None
    try:
        return Tiling(args.tile, args.overlap, args.tile_full)
    except ConfigError as err:
        raise ConfigError(f"--{err}") from None


def check_every(args: argparse.Namespace) -> None:
    if args.every < 1:
        raise ConfigError(f"--every must be a positive number of frames, got {args.every}")


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def split_video_inputs(inputs: Iterable[str]) -> tuple[list[VideoSource], list[str]]:
    """(video sources, image inputs): cameras, streams, video files and the videos inside folders; the rest.

    A folder is also an image input when it holds image files or no videos at all (so that an
    empty folder is still reported by the image search).
    """
    from ..data.io import find_image_files
    from ..inference.video import find_video_files, is_camera_index, is_stream_url, is_video_file, video_source

    sources: list[VideoSource] = []
    images: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            videos = find_video_files(path)
            sources.extend(video_source(v, v.relative_to(path).with_suffix("").as_posix()) for v in videos)
            if not videos or find_image_files(path):
                images.append(item)
        elif is_camera_index(item) or is_stream_url(item) or (path.is_file() and is_video_file(path)):
            sources.append(video_source(item))
        else:
            images.append(item)
    return sources, images


@dataclass(frozen=True)
class VideoOutputs:
    """Where one source's results go: the drawn video and the JSON lines."""

    video: Path
    lines: Path


def plan_outputs(output: Path, sources: Sequence[VideoSource], overwrite: bool = False,
                 inputs: Iterable[str | Path | None] = ()) -> list[VideoOutputs]:
    """Unique ``OUTPUT/NAME.mp4`` + ``.jsonl`` per source. Refuses (``torchdetr.output_paths``) an ``output`` that is
    a file, a target that is or lies inside an input (the video files, and ``inputs``: the command's other inputs
    such as folders and the model), and existing targets unless ``overwrite``."""
    what = f"--output {output}"
    if output.exists() and not output.is_dir():
        raise OutputError(f"{what} is a file, not a folder: choose a folder")
    everything = [*(s.location for s in sources if s.kind == "file"), *inputs]
    used: set[str] = set()
    planned = []
    for source in sources:
        name, counter = source.name, 1
        while name in used:
            counter += 1
            name = f"{source.name}_{counter}"
        used.add(name)
        outputs = VideoOutputs(output / f"{name}{VIDEO_OUTPUT_SUFFIX}", output / f"{name}{LINES_SUFFIX}")
        for target in (outputs.video, outputs.lines):
            refuse_inputs(target, everything, what=f"{what} ({target.name})")
        planned.append(outputs)
    refuse_earlier_work([p for o in planned for p in (o.video, o.lines)], what=what, overwrite=overwrite)
    return planned


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------
@dataclass
class VideoTotals:
    """What the video part of a run did."""

    videos: int = 0
    frames: int = 0
    detections: int = 0
    skipped: list[str] | None = None


def run_videos(args: argparse.Namespace, load_detector: Callable[[], Detector], sources: Sequence[VideoSource], *,
               tracking: bool = False) -> VideoTotals:
    """Predict (or track) every source into ``args.output``; print one summary line per video.

    ``load_detector`` is called once a first source has opened, so that an unreachable stream or a
    missing camera fails at once, before a model is loaded (or downloaded).
    """
    from tqdm import tqdm

    from ..inference.video import VideoReader, VideoWriter
    from ..viz.draw import draw_detections
    from ..viz.tracks import Trails, draw_tracks

    check_every(args)
    tiling = tiling_from_args(args)
    tile_options = {} if tiling is None else dict(tile=tiling.tile, overlap=tiling.overlap, tile_full=tiling.full_image)
    output = Path(args.output)
    planned = plan_outputs(output, sources, overwrite=getattr(args, "overwrite", False),
                           inputs=[*args.inputs, args.model, args.onnx])
    totals = VideoTotals(skipped=[])
    for source, outputs in zip(sources, planned):
        try:
            reader = VideoReader(source, args.every)
        except InputFileError as err:
            if source.kind != "file":
                raise
            totals.skipped.append(source.location)  # type: ignore[union-attr]
            print(f"skipped: {err}")
            continue
        try:
            detector = load_detector()
        except BaseException:
            reader.close()
            raise
        make_output_folder(outputs.video.parent, what=f"--output {output}")
        num_frames = num_detections = 0
        trails = Trails() if tracking else None
        with reader, VideoWriter(outputs.video, reader.output_rate) as writer, open(outputs.lines, "w") as lines, \
                tqdm(total=reader.num_output_frames, unit="frame", desc=source.name, dynamic_ncols=True) as progress:
            options = dict(threshold=args.threshold, batch_size=args.batch_size, **tile_options)
            if tracking:
                predictions = detector.track(reader, lost_seconds=args.lost_seconds, **options)
            else:
                predictions = detector.predict_video(reader, **options)
            for prediction in predictions:
                if trails is not None and prediction.track_ids is not None:
                    trails.update(prediction.detections, prediction.track_ids)
                    picture = draw_tracks(prediction.image, prediction.detections, prediction.track_ids, trails)
                else:
                    picture = draw_detections(prediction.image, prediction.detections)
                writer.write(picture)
                lines.write(json.dumps(prediction.to_json()) + "\n")
                num_frames += 1
                num_detections += len(prediction.detections)
                progress.update(1)
        totals.videos += 1
        totals.frames += num_frames
        totals.detections += num_detections
        print(f"{source}: {num_frames} frame(s), {num_detections} detection(s) above {args.threshold:g} → "
              f"{outputs.video}, {outputs.lines}")
    if totals.skipped:
        print(f"skipped {len(totals.skipped)} unreadable video(s): {', '.join(totals.skipped[:5])}"
              f"{' …' if len(totals.skipped) > 5 else ''}")
    return totals
