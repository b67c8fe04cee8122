"""Videos: decoding and encoding (inference/video.py), ``detr predict`` on a clip (frame count, rate, JSON
lines, detections = ``detr predict`` on each decoded frame saved as PNG), ``--every``, streams and cameras
that cannot be opened, unreadable videos, output guards, and the synthetic clip's ground truth."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import require_package

av = require_package("av", reason="the video extra (PyAV) is not installed")

from torchdetr import Detector  # noqa: E402
from torchdetr.cli import main  # noqa: E402
from torchdetr.cli.video_outputs import plan_outputs  # noqa: E402
from torchdetr.data.synthetic_video import SyntheticVideo  # noqa: E402
from torchdetr.errors import ConfigError, InputFileError, OutputError  # noqa: E402
from torchdetr.inference.video import (  # noqa: E402
    VideoReader,
    find_video_files,
    video_source,
    write_video,
)

from .test_predict import write_tiny_checkpoint  # noqa: E402

NUM_FRAMES = 30
RATE = 25
SIZE = (96, 64)  # (W, H): small frames keep the tiny model fast
MODEL_SIZE = ["--image_size", "64", "--max_size", "96"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    video = SyntheticVideo(NUM_FRAMES, seed=3, size=SIZE, num_objects=2, rate=RATE)
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    assert write_video(path, video.frames(), video.rate) == NUM_FRAMES
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` decoded with PyAV directly (the oracle for what the reader sees)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def stream_info(path: Path) -> tuple[int, Fraction]:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0)), container.streams.video[0].average_rate


def test_reader_gives_every_frame_with_its_time_and_every_nth_frame_at_a_lower_rate(clip):
    oracle = decoded_frames(clip)
    with VideoReader(video_source(clip)) as reader:
        assert reader.rate == RATE and reader.num_frames == NUM_FRAMES and reader.size == SIZE
        frames = list(reader)
    assert [f.index for f in frames] == list(range(NUM_FRAMES))
    assert [f.time for f in frames] == pytest.approx([k / RATE for k in range(NUM_FRAMES)])
    for frame, expected in zip(frames, oracle):
        assert np.array_equal(np.asarray(frame.image), expected)
    with VideoReader(video_source(clip), every=4) as reader:
        assert reader.output_rate == Fraction(RATE, 4) and reader.num_output_frames == 8
        assert [f.index for f in reader] == list(range(0, NUM_FRAMES, 4))


def test_writer_keeps_size_count_and_rate_also_for_odd_sizes(tmp_path):
    frames = [np.full((33, 47, 3), 8 * k, np.uint8) for k in range(12)]
    path = tmp_path / "odd.mp4"
    write_video(path, frames, Fraction(30000, 1001))
    count, rate = stream_info(path)
    assert count == 12 and rate == Fraction(30000, 1001)
    assert decoded_frames(path)[0].shape == (33, 47, 3)


def test_sources_are_classified_and_folders_searched(tmp_path, clip):
    assert video_source("0").kind == "camera" and video_source("0").name == "camera0"
    stream = video_source("rtsp://user:pw@cam.local:554/live/front?x=1")
    assert stream.kind == "stream" and stream.name == "front"
    assert video_source(clip).kind == "file" and video_source(clip).name == "clip"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.MOV").write_bytes(b"")
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "c.png").write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_video_files(tmp_path)] == ["a.mp4", "sub/b.MOV"]
    with pytest.raises(ConfigError, match="every"):
        VideoReader(video_source(clip), every=0)


def test_predict_on_a_clip_gives_the_same_frames_rate_and_the_detections_of_each_decoded_frame(tmp_path, clip, checkpoint):
    out = tmp_path / "out"
    code = main(["predict", str(clip), "--model", str(checkpoint), "--output", str(out), "--threshold", "0",
                 "--batch_size", "4", "--device", "cpu", *MODEL_SIZE])
    assert code == 0
    count, rate = stream_info(out / "clip.mp4")
    assert count == NUM_FRAMES and rate == RATE
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(NUM_FRAMES))
    assert [line["time"] for line in lines] == pytest.approx([k / RATE for k in range(NUM_FRAMES)])

    # The video is lossy-encoded, so the reference is the DECODED frame, saved losslessly as PNG and predicted
    # like any image: by the API, and by `detr predict` on the folder of PNGs (its JSON rounds boxes to 0.01).
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for k, pixels in enumerate(decoded_frames(clip)):
        Image.fromarray(pixels).save(pngs / f"{k:03d}.png")
    detector = Detector.from_pretrained(checkpoint, "cpu", threshold=0.0, image_size=64, max_size=96)
    for k, line in enumerate(lines):
        expected = detector.predict(pngs / f"{k:03d}.png")
        found = sorted(line["detections"], key=lambda d: d["query"])
        expected = sorted(expected, key=lambda d: d.query)
        assert [(d["label"], d["query"]) for d in found] == [(d.label, d.query) for d in expected]
        assert np.allclose([d["box"] + [d["score"]] for d in found], [[*d.box, d.score] for d in expected], atol=1e-4)
    assert main(["predict", str(pngs), "--model", str(checkpoint), "--output", str(tmp_path / "png_out"), "--threshold", "0",
                 "--device", "cpu", "--no_render", *MODEL_SIZE]) == 0
    results = json.loads((tmp_path / "png_out" / "predictions.json").read_text())
    by_frame: dict[int, list] = {}
    for entry in results:
        by_frame.setdefault(int(Path(entry["file_name"]).stem), []).append(entry)
    for k, line in enumerate(lines):
        cli = sorted((e["score"], e["category_id"], *e["bbox"]) for e in by_frame[k])
        ours = sorted((d["score"], d["label"], d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1])
                      for d in line["detections"])
        assert np.allclose(cli, ours, atol=0.006)  # predictions.json: scores to 1e-5, boxes to 0.01 px


def test_every_n_predicts_every_nth_frame_and_keeps_the_duration(tmp_path, clip, checkpoint):
    out = tmp_path / "out"
    assert main(["predict", str(clip.parent), "--model", str(checkpoint), "--output", str(out), "--every", "3",
                 "--device", "cpu", *MODEL_SIZE]) == 0
    count, rate = stream_info(out / "clip.mp4")
    assert count == NUM_FRAMES // 3 and rate == Fraction(RATE, 3)
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(0, NUM_FRAMES, 3))
    assert not (out / "predictions.json").exists()  # a folder of videos only: no image results


@pytest.mark.parametrize("source", ["7", "rtsp://127.0.0.1:9/nothing", "http://127.0.0.1:9/clip.mp4"])
def test_missing_camera_or_unreachable_stream_is_one_error_line_with_exit_2(tmp_path, source, capsys):
    require_package("cv2", reason="the camera extra (OpenCV) is not installed")
    code = main(["predict", source, "--model", "not-loaded.pth", "--output", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and ("camera 7" in err or source in err)
    assert not (tmp_path / "out").exists()


def test_unreadable_video_is_skipped_and_reported(tmp_path, checkpoint, capsys):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really")
    code = main(["predict", str(tmp_path / "broken.mp4"), "--model", str(checkpoint), "--output", str(tmp_path / "out"),
                 "--device", "cpu"])
    assert code == 1
    assert "broken.mp4" in capsys.readouterr().out
    with pytest.raises(InputFileError, match=r"broken\.mp4"):
        VideoReader(video_source(tmp_path / "broken.mp4"))


def test_earlier_outputs_and_input_videos_are_never_overwritten(tmp_path, clip, checkpoint, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.jsonl").write_text("earlier run\n")
    assert main(["predict", str(clip), "--model", str(checkpoint), "--output", str(out), "--device", "cpu"]) == 2
    assert "already holds clip.jsonl" in capsys.readouterr().err
    assert (out / "clip.jsonl").read_text() == "earlier run\n" and not (out / "clip.mp4").exists()
    before = clip.read_bytes()
    with pytest.raises(OutputError, match="is the input file"):
        plan_outputs(clip.parent, [video_source(clip)], overwrite=True)
    assert main(["track", str(clip), "--model", str(checkpoint), "--output", str(clip.parent), "--overwrite",
                 "--device", "cpu"]) == 2
    assert clip.read_bytes() == before


def test_synthetic_video_ground_truth_is_where_the_shapes_are_drawn():
    video = SyntheticVideo(21, seed=1, size=(160, 120), num_objects=3)
    background = video.background.astype(int)
    for k in (0, 7, 20):
        pixels = video.frame(k).astype(int)
        changed = np.abs(pixels - background).sum(axis=2) > 0
        truth = video.ground_truth(k)
        covered = np.zeros_like(changed)
        for box in truth:
            x1, y1, x2, y2 = box.box
            covered[y1:y2, x1:x2] = True
            inside = changed[y1:y2, x1:x2]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()  # touches 4 edges
        assert not (changed & ~covered).any()
        assert len({b.track_id for b in truth}) == 3
    first, last = video.ground_truth(0), video.ground_truth(20)
    middle = video.ground_truth(10)
    for a, m, b in zip(first, middle, last):  # a straight line: the middle frame halfway (within rounding)
        assert np.allclose(np.add(a.box, b.box) / 2, m.box, atol=1.5)
