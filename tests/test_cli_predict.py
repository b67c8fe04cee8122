"""``detr predict`` and ``detr visualize attention``: COCO results JSON, pictures, errors, ONNX, and a
train-then-predict run on synthetic data."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import types
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from torchdetr import Detector
from torchdetr.cli import main
from torchdetr.data.synthetic import write_coco_folder
from torchdetr.viz.draw import class_color

from .conftest import require_package
from .test_predict import write_tiny_checkpoint


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_coco_folder(tmp_path_factory.mktemp("synthetic"), num_train=2, num_val=3, seed=0)


def test_predict_writes_coco_results_and_one_picture_per_image(tmp_path, checkpoint, dataset, capsys):
    inputs = tmp_path / "inputs"
    (inputs / "sub").mkdir(parents=True)
    for name in ("val_000000.png", "val_000001.png"):
        shutil.copy(dataset / "images" / name, inputs / name)
    shutil.copy(dataset / "images" / "val_000002.png", inputs / "sub" / "val_000002.png")
    shutil.copy(dataset / "images" / "train_000000.png", inputs / "sub" / "train_000000.png")  # not in the val json
    (inputs / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    annotations = dataset / "annotations" / "instances_val.json"
    code = main(["predict", str(inputs), "--model", str(checkpoint), "--output", str(out), "--threshold", "0",
                 "--annotations", str(annotations), "--batch_size", "3", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "broken.jpg" in printed and "4 image(s)" in printed

    gt = _coco(annotations)
    results = json.loads((out / "predictions.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(str(out / "predictions.json"))  # pycocotools validates ids and the bbox format
    assert len(dt.getAnnIds()) == len(results) == 3 * 10  # 3 val images × 10 queries at threshold 0
    for entry in results:
        assert gt.imgs[entry["image_id"]]["file_name"] == Path(entry["file_name"]).name
        assert entry["category_id"] in range(7) and 0 <= entry["score"] <= 1
    for ann in dt.dataset["annotations"]:
        assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])

    for name in ("val_000000.png", "val_000001.png", "sub/val_000002.png", "sub/train_000000.png"):
        with Image.open(out / "images" / name) as picture, Image.open(dataset / "images" / Path(name).name) as source:
            assert picture.size == source.size
            assert np.abs(np.asarray(picture, dtype=int) - np.asarray(source.convert("RGB"), dtype=int)).sum() > 0
    assert not (out / "images" / "notes.txt").exists()


def test_cli_matches_the_api_and_draws_the_box_where_the_detection_is(tmp_path, checkpoint, dataset):
    path = dataset / "images" / "val_000001.png"
    scores = sorted((d.score for d in Detector.from_pretrained(checkpoint, "cpu", threshold=0).predict(path)), reverse=True)
    threshold = (scores[0] + scores[1]) / 2  # keeps exactly the best detection
    best = Detector.from_pretrained(checkpoint, "cpu", threshold=threshold).predict(path)
    assert len(best) == 1
    out = tmp_path / "out"
    assert main(["predict", str(path), "--model", str(checkpoint), "--output", str(out), "--threshold", f"{threshold:.9f}"]) == 0
    (entry,) = json.loads((out / "predictions.json").read_text())
    assert entry["image_id"] == 1 and entry["file_name"] == "val_000001.png"  # ids 1..N without --annotations
    x1, y1, x2, y2 = best[0].box
    assert entry["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.01)
    assert entry["category_id"] == best[0].label
    picture = np.asarray(Image.open(out / "images" / "val_000001.png"))
    height, width = picture.shape[:2]
    left, right = round(max(x1, 0)), round(min(x2, width - 1))
    top, bottom = round(max(y1, 0)), round(min(y2, height - 1))
    color = class_color(best[0].label)
    assert tuple(picture[(top + bottom) // 2, left]) == color  # left edge at mid-height
    assert tuple(picture[bottom, (left + right) // 2]) == color  # bottom edge
    assert tuple(picture[(top + bottom) // 2, right]) == color  # right edge


def test_predict_errors_are_one_line(tmp_path, checkpoint, dataset, capsys, monkeypatch):
    image = str(dataset / "images" / "val_000000.png")
    cases = [
        (["predict", image, "--model", str(tmp_path / "nope.pth"), "--output", str(tmp_path)], "nope.pth"),
        (["predict", str(tmp_path / "missing.jpg"), "--model", str(checkpoint), "--output", str(tmp_path)], "missing.jpg"),
        (["predict", image, "--output", str(tmp_path)], "--model"),
        (["predict", image, "--model", str(checkpoint), "--output", str(tmp_path), "--threshold", "1.5"], "--threshold"),
        (["predict", image, "--model", str(checkpoint), "--output", str(tmp_path), "--annotations", image], "--annotations"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err, err

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert main(["predict", image, "--model", "detr_resnet50", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "detr_resnet50" in err and "download" in err and "\n" not in err


def test_visualize_attention_writes_the_two_pictures(tmp_path, checkpoint, dataset, capsys):
    image = dataset / "images" / "val_000000.png"
    out = tmp_path / "attention"
    assert main(["visualize", "attention", str(image), "--model", str(checkpoint), "--output", str(out),
                 "--threshold", "0", "--max_detections", "3", "--points", "10,20", "100,64"]) == 0
    decoder, encoder = out / "val_000000_decoder_attention.png", out / "val_000000_encoder_attention.png"
    for path in (decoder, encoder):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert pixels.shape[0] > 200 and pixels.std() > 10
    with Image.open(decoder) as three:
        height_three = three.height
    assert main(["visualize", "attention", str(image), "--model", str(checkpoint), "--output", str(out),
                 "--threshold", "0", "--max_detections", "1"]) == 2  # the earlier pictures are kept …
    assert "--overwrite" in capsys.readouterr().err
    assert main(["visualize", "attention", str(image), "--model", str(checkpoint), "--output", str(out),
                 "--threshold", "0", "--max_detections", "1", "--overwrite"]) == 0  # … unless asked
    with Image.open(decoder) as one:
        assert one.height < height_three  # one row per detection
    capsys.readouterr()
    assert main(["visualize", "attention", str(image), "--model", str(checkpoint), "--output", str(out),
                 "--points", "500,10"]) == 2
    assert "outside" in capsys.readouterr().err


def test_predict_with_onnx_matches_pytorch(tmp_path, checkpoint, dataset):
    require_package("onnxruntime")
    require_package("onnxscript")
    import onnx

    from torchdetr.inference.export import export_onnx, loaded_model_metadata
    from torchdetr.inference.loading import load_model

    loaded = load_model(checkpoint)
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(loaded.model, onnx_path, sample_size=(128, 160), check=False, metadata=loaded_model_metadata(loaded))
    images = [str(dataset / "images" / f"val_00000{i}.png") for i in range(2)]
    runs = {}
    for kind, flag in (("torch", ["--model", str(checkpoint)]), ("onnx", ["--onnx", str(onnx_path)])):
        out = tmp_path / kind
        assert main(["predict", *images, *flag, "--output", str(out), "--threshold", "0", "--device", "cpu"]) == 0
        runs[kind] = json.loads((out / "predictions.json").read_text())
    assert len(runs["onnx"]) == len(runs["torch"]) == 20
    for r in runs["onnx"]:  # the nearest PyTorch detection of the same image agrees
        same_image = [t for t in runs["torch"] if t["image_id"] == r["image_id"]]
        match = min(same_image, key=lambda t: np.abs(np.subtract(t["bbox"], r["bbox"])).sum())
        assert match["category_id"] == r["category_id"]
        assert np.abs(np.subtract(match["bbox"], r["bbox"])).max() < 0.05
        assert match["score"] == pytest.approx(r["score"], abs=1e-4)
    detector = Detector.from_onnx(onnx_path, device="cpu")
    assert detector.category_names == loaded.category_names
    assert (detector.image_size, detector.max_size) == (loaded.image_size, loaded.max_size) == (128, 213)
    with pytest.raises(ValueError, match="PyTorch model"):
        detector.attention(images[0])
    # a file exported before the size was recorded: the size of its stored config
    proto = onnx.load(str(onnx_path))
    kept = [p for p in proto.metadata_props if p.key not in ("torchdetr.image_size", "torchdetr.max_size")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    assert Detector.from_onnx(tmp_path / "old.onnx", device="cpu").image_size == 128


@pytest.mark.slow
def test_train_briefly_then_predict_finds_the_objects(tmp_path, capsys):
    """``detr train`` overfits 4 synthetic images; ``detr predict`` then finds their objects (IoU > 0.5)."""
    run = tmp_path / "run"
    seed, epochs = 5, 150
    argv = ["train", "--dataset_file", "synthetic", "--num_train", "4", "--num_val", "4", "--seed", str(seed),
            "--image_size", "128", "--backbone", "resnet18", "--hidden_dim", "64", "--enc_layers", "1",
            "--dec_layers", "2", "--nheads", "4", "--dim_feedforward", "128", "--num_queries", "10", "--dropout", "0",
            "--backbone_weights", "none", "--lr", "1e-3", "--lr_backbone", "1e-3", "--batch_size", "4",
            "--epochs", str(epochs), "--eval_every", str(epochs), "--num_workers", "0", "--device", "cpu",
            "--print_freq", "1000", "--output_dir", str(run)]
    assert main(argv) == 0
    data = write_coco_folder(tmp_path / "data", num_train=4, num_val=0, seed=seed)  # the images it trained on
    annotations = data / "annotations" / "instances_train.json"
    out = tmp_path / "predictions"
    assert main(["predict", str(data / "images"), "--model", str(run / "checkpoint.pth"), "--output", str(out),
                 "--threshold", "0.5", "--annotations", str(annotations)]) == 0
    gt = _coco(annotations)
    results = json.loads((out / "predictions.json").read_text())
    found = 0
    for image_id in gt.getImgIds():
        gt_boxes = torch.tensor([a["bbox"] for a in gt.imgToAnns[image_id]], dtype=torch.float64)
        predicted = torch.tensor([r["bbox"] for r in results if r["image_id"] == image_id], dtype=torch.float64)
        if not len(predicted):
            continue
        to_xyxy = lambda b: torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)  # noqa: E731
        best_iou = box_iou(to_xyxy(gt_boxes), to_xyxy(predicted)).max(dim=1).values
        found += bool((best_iou > 0.5).float().mean() >= 0.5)  # at least half of its objects found
    assert found >= 3, f"objects found in only {found} of 4 images"

    # the run's log and evaluation file plot
    assert main(["plot", "logs", str(run), "--output", str(tmp_path / "logs.png")]) == 0
    assert main(["plot", "pr", str(run / "eval" / "latest.pth"), "--output", str(tmp_path / "pr.png")]) == 0
    assert (tmp_path / "logs.png").stat().st_size > 5000 and (tmp_path / "pr.png").stat().st_size > 5000


@pytest.mark.parametrize("command", ["predict", "track", "serve"])
def test_predict_track_and_serve_load_a_checkpoint_with_the_same_model_flags(checkpoint, command, monkeypatch):
    """One set of model flags (``cli/model_choice.py``): ``--model`` with ``--precision``, ``--exported`` refusing
    ``--precision``, neither or both refused. ``detr track`` had reused predict's loader, which read ``--task`` and
    ``--precision``, flags track did not have: it crashed on every real model."""
    import torchdetr.cli.predict as predict_cli
    import torchdetr.cli.serve as serve_cli
    import torchdetr.cli.track as track_cli
    from torchdetr.cli import build_parser
    from torchdetr.errors import ConfigError

    loaded: list[Detector] = []

    def run_videos(args, load, sources, tracking):
        loaded.append(load())
        return types.SimpleNamespace(frames=1)

    def load(args):
        if command == "predict":
            detector = predict_cli._detector(args)
        elif command == "serve":
            detector = serve_cli._detector(args)
        else:  # track hands run_videos a loader; take the detector it builds instead of reading videos
            monkeypatch.setattr(track_cli, "run_videos", run_videos)
            assert track_cli.run(args) == 0
            detector = loaded.pop()
        return detector

    def parse(*flags):
        outputs = [] if command == "serve" else ["rtsp://camera.local/stream", "--output", "out"]
        return build_parser(command).parse_args([command, *outputs, "--device", "cpu", "--threshold", "0.5", *flags])

    detector = load(parse("--model", str(checkpoint), "--precision", "fp32"))
    assert isinstance(detector, Detector) and detector.precision == "fp32"
    assert load(parse("--model", str(checkpoint))).precision == "faithful"
    with pytest.raises(ConfigError, match="--precision bf16 applies to --model"):
        load(parse("--exported", "model.onnx", "--precision", "bf16"))
    for flags in [(), ("--model", str(checkpoint), "--onnx", "model.onnx")]:
        with pytest.raises(ConfigError, match="give either --model"):
            load(parse(*flags))


def test_video_outputs_are_refused_onto_a_file_or_inside_an_input_folder(tmp_path):
    """``plan_outputs`` (``detr predict``/``track`` on videos) follows ``torchdetr.output_paths`` as images do."""
    from torchdetr.cli.video_outputs import plan_outputs
    from torchdetr.errors import OutputError
    from torchdetr.inference.video import video_source

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"not decoded here")
    sources = [video_source(videos / "clip.mp4")]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        plan_outputs(tmp_path / "a_file", sources)
    with pytest.raises(OutputError, match="inside the input folder"):
        plan_outputs(videos / "out", sources, inputs=[str(videos)])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "clip.jsonl").write_text("earlier run\n")
    with pytest.raises(OutputError, match=r"already holds clip\.jsonl"):
        plan_outputs(tmp_path / "out", sources)
    assert [o.video.name for o in plan_outputs(tmp_path / "out", sources, overwrite=True)] == ["clip.mp4"]
