"""The fault corpus (issue 10): every kind of bad input and failure a hostile-but-fair user can produce.

Each kind runs one ``detr`` command (in-process through ``torchdetr.cli.main``; in a subprocess only where
a signal is needed) and asserts what the user sees and what happens to their files:

* the exit code (2 for a user error, 1 where the command reports problems, 130 when interrupted);
* one line ``detr COMMAND: error: …`` naming the culprit (file, option, key or value) — or, for the
  commands that print a report (``detr data check``, ``detr predict`` skipping unreadable files), the
  culprit named in that report — and no ``Traceback`` anywhere;
* no input changed and nothing written outside the output location: the whole tree of inputs is
  hashed before and after, and every new file lies under the case's output folder;
* no partial or temporary file left in the output folder.

Kinds are grouped by area (data, checkpoint, config, option, io, signal); ``test_the_corpus_is_big_enough``
counts them. Models are tiny (resnet18, hidden 32, one layer each), images 64 px.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchdetr.atomic_write import TEMPORARY_FILE
from torchdetr.cli import main
from torchdetr.data.synthetic import write_coco_folder

from .conftest import ROOT, require_package
from .test_predict import write_tiny_checkpoint
from .tiny import TINY_MODEL

AREAS = ("data", "checkpoint", "config", "option", "io", "signal")
MIN_KINDS = 40
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")  # logging, when it reaches stderr
IMAGE_SIZE = 64
MODEL = TINY_MODEL | dict(num_classes=6, image_size=IMAGE_SIZE, dropout=0.0)
TRAIN = [*(f"--{key}={value}" for key, value in MODEL.items() if key != "num_classes"),
         "--batch_size=2", "--epochs=1", "--device=cpu", "--num_workers=0", "--lr_backbone=0"]


# ------------------------------------------------------------------------------------------------
# the world every case reads (never changed) and one case's own folder
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """Inputs shared by all cases: a small COCO dataset, a tiny checkpoint and one with NaN weights."""

    root: Path
    data: Path
    checkpoint: Path
    nan_checkpoint: Path

    @property
    def image(self) -> Path:
        return self.data / "images" / "val_000000.png"

    @property
    def val_json(self) -> Path:
        return self.data / "annotations" / "instances_val.json"


@dataclass
class Case:
    """One case's folder: ``inputs`` (files made for this case, which must not change) and ``out`` (the only
    place the command may write)."""

    root: Path
    world: World
    monkeypatch: pytest.MonkeyPatch

    @property
    def inputs(self) -> Path:
        return self.root / "in"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def dataset(self) -> Path:
        """A copy of the world's dataset that the case may break."""
        return Path(shutil.copytree(self.world.data, self.inputs / "data"))

    def edit_json(self, path: Path, change: Callable[[dict], None]) -> None:
        content = json.loads(path.read_text())
        change(content)
        path.write_text(json.dumps(content))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("world")
    data = write_coco_folder(root / "data", num_train=2, num_val=2, seed=0, image_size=IMAGE_SIZE)
    checkpoint = write_tiny_checkpoint(root / "tiny.pth", **MODEL)
    state = torch.load(checkpoint, weights_only=False)
    state["model"]["class_embed.bias"] = torch.full_like(state["model"]["class_embed.bias"], float("nan"))
    torch.save(state, root / "nan.pth")
    return World(root, data, checkpoint, root / "nan.pth")


# ------------------------------------------------------------------------------------------------
# the registry of fault kinds
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    kind: str
    area: str
    make: Callable[[Case], tuple[list[str], str]]  # → (argv, culprit named in the message)
    code: int = 2
    stream: str = "err"  # where the culprit is named: "err" (one error line), "out" (a report), "interrupt"
    usage: bool = False  # argparse's own refusal: its usage line precedes the error line
    after: Callable[[Case], None] | None = None  # a further check of the case's files


FAULTS: dict[str, Fault] = {}


def fault(kind: str, area: str, **options) -> Callable:
    assert area in AREAS and kind not in FAULTS

    def register(make: Callable[[Case], tuple[list[str], str]]) -> Callable:
        FAULTS[kind] = Fault(kind, area, make, **options)
        return make

    return register


def _png_header(width: int, height: int) -> bytes:
    """A PNG file that declares ``width`` x ``height`` pixels (and holds almost none)."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _nan_tiff(path: Path) -> Path:
    pixels = np.full((IMAGE_SIZE, IMAGE_SIZE), 0.5, np.float32)
    pixels[3, 3] = np.nan
    Image.fromarray(pixels, mode="F").save(path)
    return path


def _replace_train_image(case: Case, data: Path, write: Callable[[Path], None], suffix: str = ".png") -> Path:
    """Replace the first training image by what ``write(path)`` writes (renamed to ``suffix`` in the JSON)."""
    old = data / "images" / "train_000000.png"
    new = old.with_suffix(suffix)
    old.unlink()
    write(new)
    case.edit_json(data / "annotations" / "instances_train.json",
                   lambda d: d["images"][0].update(file_name=new.name))
    return new


def _truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _train(data: Path, case: Case, *extra: str) -> list[str]:
    return ["train", *TRAIN, "--coco_path", str(data), "--output_dir", str(case.out / "run"), *extra]


def _predict(case: Case, *inputs: Path | str, model: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    model = model or case.world.checkpoint
    return ["predict", *map(str, inputs or (case.world.image,)), "--model", str(model), "--output", str(case.out),
            "--device", "cpu", *extra]


# ------------------------------------------------------------------------------------------------ data
@fault("annotation file is not JSON", "data")
def _(c: Case):
    data = c.dataset()
    (data / "annotations" / "instances_train.json").write_text("{'images': [")
    return _train(data, c), "instances_train.json"


@fault("annotation file is empty", "data")
def _(c: Case):
    data = c.dataset()
    (data / "annotations" / "instances_train.json").write_bytes(b"")
    return _train(data, c), "instances_train.json"


@fault("annotation file is not UTF-8", "data", code=1, stream="out")
def _(c: Case):
    path = c.file("bad.json", b'{"images": "\xff\xfe"}')
    return ["data", "check", str(path), "--no_images"], "bad.json"


@fault("annotation file is a JSON list", "data", code=1, stream="out")
def _(c: Case):
    path = c.file("list.json", "[1, 2, 3]")
    return ["data", "check", str(path), "--no_images"], "not_coco"


@fault("box given as strings", "data")
def _(c: Case):
    data = c.dataset()
    c.edit_json(data / "annotations" / "instances_train.json",
                lambda d: d["annotations"][0].update(bbox=["1", "2", "3", "4"]))
    return _train(data, c), "'bbox'"


@fault("box with NaN", "data")
def _(c: Case):
    data = c.dataset()
    c.edit_json(data / "annotations" / "instances_train.json",
                lambda d: d["annotations"][0].update(bbox=[float("nan"), 1, 2, 3]))
    return _train(data, c), "not finite"


@fault("image file missing", "data")
def _(c: Case):
    data = c.dataset()
    (data / "images" / "train_000001.png").unlink()
    return _train(data, c), "train_000001.png"


@fault("image header truncated", "data")
def _(c: Case):
    data = c.dataset()
    _truncate(data / "images" / "train_000001.png", 0.05)
    return _train(data, c), "train_000001.png"


@fault("image pixels truncated (found by data check --full)", "data", code=1, stream="out")
def _(c: Case):
    data = c.dataset()
    _truncate(data / "images" / "val_000001.png", 0.6)
    return ["data", "check", str(data), "--full"], "val_000001.png"


@fault("image pixels truncated (found while training)", "data")
def _(c: Case):
    data = c.dataset()
    _truncate(data / "images" / "train_000001.png", 0.6)
    return _train(data, c), "train_000001.png"


@fault("NaN pixels in a float image", "data")
def _(c: Case):
    data = c.dataset()
    image = _replace_train_image(c, data, _nan_tiff, ".tif")
    return _train(data, c), image.name


@fault("NaN pixels read by a DataLoader worker", "data")
def _(c: Case):
    data = c.dataset()
    image = _replace_train_image(c, data, _nan_tiff, ".tif")
    return _train(data, c, "--num_workers=1"), image.name


@fault("NaN pixels (found by data check --full)", "data", code=1, stream="out")
def _(c: Case):
    data = c.dataset()
    image = _replace_train_image(c, data, _nan_tiff, ".tif")
    return ["data", "check", str(data), "--full"], f"{image.name}: image 1: 1 of 4096 pixels are NaN"


@fault("decompression bomb header", "data", code=1, stream="out")
def _(c: Case):
    data = c.dataset()
    image = _replace_train_image(c, data, lambda p: p.write_bytes(_png_header(100_000, 100_000)))
    return ["data", "check", str(data)], f"{image.name}: image 1: cannot read the image"


@fault("image size differs from the JSON", "data")
def _(c: Case):
    data = c.dataset()
    c.edit_json(data / "annotations" / "instances_train.json", lambda d: d["images"][1].update(width=999))
    return _train(data, c), "train_000001.png"


@fault("image that is a text file", "data")
def _(c: Case):
    path = c.file("photo.jpg", "this is not a picture")
    return ["visualize", "attention", str(path), "--model", str(c.world.checkpoint), "--output", str(c.out)], "photo.jpg"


@fault("only unreadable images to predict", "data", code=1, stream="out")
def _(c: Case):
    path = c.file("photo.jpg", b"\xff\xd8\xff\xe0 broken")
    return _predict(c, path), "photo.jpg"


@fault("dataset folder without annotations", "data")
def _(c: Case):
    (c.inputs / "empty").mkdir(parents=True)
    return _train(c.inputs / "empty", c), "empty"


@fault("--annotations is not a COCO file", "data")
def _(c: Case):
    ann = c.file("ann.json", "[]")
    return _predict(c, extra=("--annotations", str(ann))), "ann.json"


@fault("detections file is not JSON", "data")
def _(c: Case):
    results = c.file("dets.json", "{{")
    return ["eval", "--ann", str(c.world.val_json), "--results", str(results)], "dets.json"


@fault("detections without boxes", "data")
def _(c: Case):
    results = c.file("dets.json", json.dumps([{"image_id": 1, "category_id": 1, "score": 0.5}]))
    return ["eval", "--ann", str(c.world.val_json), "--results", str(results)], "dets.json"


@fault("ground truth is binary garbage", "data")
def _(c: Case):
    ann = c.file("gt.json", bytes(range(256)))
    results = c.file("dets.json", "[]")
    return ["eval", "--ann", str(ann), "--results", str(results)], "gt.json"


@fault("class-name file is binary", "data")
def _(c: Case):
    src = c.inputs / "voc"
    (src / "JPEGImages").mkdir(parents=True)
    (src / "Annotations").mkdir()
    Image.new("RGB", (20, 10)).save(src / "JPEGImages" / "a.jpg")
    classes = c.file("classes.txt", b"\x00\xff\xfe\x80")
    return ["data", "convert", str(src), "--from", "voc", "--out", str(c.out), "--classes", str(classes)], "classes.txt"


@fault("convert source without images", "data")
def _(c: Case):
    (c.inputs / "yolo").mkdir(parents=True)
    c.file("yolo/classes.txt", "cat\n")
    return ["data", "convert", str(c.inputs / "yolo"), "--from", "yolo", "--out", str(c.out)], "yolo"


@fault("stats of a broken annotation file", "data")
def _(c: Case):
    ann = c.file("instances_x.json", json.dumps({"images": [], "annotations": [{"id": 1}], "categories": []}))
    return ["data", "stats", str(ann)], "instances_x.json"


# ------------------------------------------------------------------------------------------------ checkpoints
@fault("checkpoint is a text file", "checkpoint")
def _(c: Case):
    return _predict(c, model=c.file("model.pth", "hello, I am not a checkpoint")), "model.pth"


@fault("checkpoint truncated", "checkpoint")
def _(c: Case):
    path = c.file("cut.pth", c.world.checkpoint.read_bytes()[:100_000])
    return _predict(c, model=path), "cut.pth"


@fault("checkpoint is an empty file", "checkpoint")
def _(c: Case):
    return ["export", "--model", str(c.file("empty.pth", b"")), "--output", str(c.out / "m.onnx")], "empty.pth"


@fault("safetensors file is garbage", "checkpoint")
def _(c: Case):
    return _predict(c, model=c.file("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")), \
        "model.safetensors"


@fault("checkpoint holding code (pickle)", "checkpoint")
def _(c: Case):
    class Trap:
        def __reduce__(self):
            return (os.system, (f"touch {c.out / 'pwned'}",))

    path = c.inputs / "trap.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Trap()}, path)
    return ["export", "--model", str(path), "--output", str(c.out / "m.pt2")], "trap.pth"


@fault("checkpoint holding a list", "checkpoint")
def _(c: Case):
    path = c.inputs / "list.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([1, 2, 3], path)
    return _predict(c, model=path), "list.pth"


@fault("checkpoint of another network", "checkpoint")
def _(c: Case):
    path = c.inputs / "resnet.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}, path)
    return ["eval", "--model", str(path), "--coco_path", str(c.world.data), "--device", "cpu",
            "--num_workers", "0"], "resnet.pth"


@fault("checkpoint file missing", "checkpoint")
def _(c: Case):
    return _predict(c, model=c.inputs / "nowhere.pth"), "nowhere.pth"


@fault("--resume truncated", "checkpoint")
def _(c: Case):
    path = c.file("resume.pth", c.world.checkpoint.read_bytes()[:5000])
    return _train(c.world.data, c, "--resume", str(path)), "resume.pth"


@fault("--pretrained of another architecture", "checkpoint")
def _(c: Case):
    path = write_tiny_checkpoint(c.inputs / "wide.pth", **(MODEL | {"hidden_dim": 64}))
    return _train(c.world.data, c, "--pretrained", str(path)), "wide.pth"


@fault("backbone weights are garbage", "checkpoint")
def _(c: Case):
    path = c.file("backbone.pth", "garbage")
    return _train(c.world.data, c, f"--backbone_weights={path}"), "backbone.pth"


@fault("model produces NaN (predict)", "checkpoint")
def _(c: Case):
    return _predict(c, model=c.world.nan_checkpoint), "non-finite"


@fault("model produces NaN (eval)", "checkpoint")
def _(c: Case):
    return ["eval", "--model", str(c.world.nan_checkpoint), "--coco_path", str(c.world.data), "--device", "cpu",
            "--num_workers", "0", "--batch_size", "2"], "non-finite"


@fault("ONNX file is garbage", "checkpoint")
def _(c: Case):
    require_package("onnxruntime")
    path = c.file("model.onnx", b"\x08\x07garbage" * 10)
    return ["predict", str(c.world.image), "--onnx", str(path), "--output", str(c.out), "--device", "cpu"], "model.onnx"


@fault("exported TorchScript passed as a checkpoint", "checkpoint")
def _(c: Case):
    return _predict(c, model=c.file("model.ts", b"PK\x03\x04 not really a zip")), "model.ts"


@fault("evaluation file for plot pr is garbage", "checkpoint")
def _(c: Case):
    return ["plot", "pr", str(c.file("latest.pth", "garbage")), "--output", str(c.out / "pr.png")], "latest.pth"


@fault("training log is garbage", "checkpoint")
def _(c: Case):
    run = c.inputs / "run"
    c.file("run/log.txt", "{\"epoch\": 0, \"train_loss\": 1.0}\nnot json at all\n")
    return ["plot", "logs", str(run), "--output", str(c.out / "logs.png")], "log.txt"


# ------------------------------------------------------------------------------------------------ configs
@fault("config: YAML syntax error", "config")
def _(c: Case):
    return _train(c.world.data, c, "--config", str(c.file("bad.yaml", "lr: [1, 2\n"))), "bad.yaml"


@fault("config: not a mapping", "config")
def _(c: Case):
    return _train(c.world.data, c, "--config", str(c.file("list.yaml", "- lr\n- 1\n"))), "list.yaml"


@fault("config: unknown key", "config")
def _(c: Case):
    return _train(c.world.data, c, "--config", str(c.file("typo.yaml", "learning_rate: 0.1\n"))), "learning_rate"


@fault("config: value of the wrong type", "config")
def _(c: Case):
    return _train(c.world.data, c, "--config", str(c.file("type.yaml", "lr: fast\n"))), "lr"


@fault("config: boolean as a string", "config")
def _(c: Case):
    return _train(c.world.data, c, "--config", str(c.file("bool.json", '{"eval": "maybe"}'))), "eval"


@fault("config: file missing", "config")
def _(c: Case):
    return _train(c.world.data, c, "--config", str(c.inputs / "none.yaml")), "none.yaml"


@fault("config: binary file", "config")
def _(c: Case):
    return _train(c.world.data, c, "--config", str(c.file("bin.yaml", b"\x00\xff\xfe\x81"))), "bin.yaml"


# ------------------------------------------------------------------------------------------------ options
@fault("--epochs negative", "option")
def _(c: Case):
    return _train(c.world.data, c, "--epochs=-1"), "--epochs"


@fault("--lr not a number", "option", usage=True)
def _(c: Case):
    return _train(c.world.data, c, "--lr", "fast"), "--lr"


@fault("--threshold out of range", "option")
def _(c: Case):
    return _predict(c, extra=("--threshold", "1.5")), "--threshold"


@fault("--batch_size zero", "option")
def _(c: Case):
    return _predict(c, extra=("--batch_size", "0")), "--batch_size"


@fault("--device that does not exist", "option")
def _(c: Case):
    argv = _predict(c)
    device = "cuda:7" if not torch.cuda.is_available() else "tpu"
    argv[argv.index("--device") + 1] = device
    return argv, device


@fault("--opset too low", "option")
def _(c: Case):
    return ["export", "--model", str(c.world.checkpoint), "--output", str(c.out / "m.onnx"), "--opset", "9"], "--opset"


@fault("export suffix unknown", "option")
def _(c: Case):
    return ["export", "--model", str(c.world.checkpoint), "--output", str(c.out / "m.txt")], "m.txt"


@fault("--num_train negative", "option")
def _(c: Case):
    return ["data", "synth", "--out", str(c.out), "--num_train", "-1"], "--num_train"


@fault("--val_fraction out of range", "option")
def _(c: Case):
    (c.inputs / "voc").mkdir(parents=True)
    return ["data", "convert", str(c.inputs / "voc"), "--from", "voc", "--out", str(c.out), "--val_fraction", "2"], \
        "val_fraction"


@fault("--points outside the image", "option")
def _(c: Case):
    return ["visualize", "attention", str(c.world.image), "--model", str(c.world.checkpoint), "--output", str(c.out),
            "--points", "500,10"], "--points"


@fault("--ann without --results", "option")
def _(c: Case):
    return ["eval", "--ann", str(c.world.val_json)], "--results"


@fault("neither --model nor --onnx", "option")
def _(c: Case):
    return ["predict", str(c.world.image), "--output", str(c.out)], "--model"


@fault("plot output not a PNG", "option")
def _(c: Case):
    c.file("run/log.txt", json.dumps({"epoch": 0, "train_loss": 1.0}) + "\n")
    return ["plot", "logs", str(c.inputs / "run"), "--output", str(c.out / "logs.jpg")], "--output"


@fault("--full with --no_images", "option")
def _(c: Case):
    return ["data", "check", str(c.world.data), "--full", "--no_images"], "--full"


# ------------------------------------------------------------------------------------------------ I/O
@fault("predict --output is the dataset holding the input images", "io")
def _(c: Case):
    data = c.dataset()
    return ["predict", str(data / "images"), "--model", str(c.world.checkpoint), "--output", str(data)], \
        str(data / "images")


@fault("predict --output would render over an input image", "io")
def _(c: Case):
    data = c.dataset()
    return ["predict", str(data / "images" / "val_000000.png"), "--model", str(c.world.checkpoint), "--output",
            str(data)], "val_000000.png"


@fault("predict --output inside the input folder", "io")
def _(c: Case):
    data = c.dataset()
    return ["predict", str(data / "images"), "--model", str(c.world.checkpoint), "--output",
            str(data / "images" / "out")], str(data / "images")


@fault("predict --output holds an earlier prediction", "io")
def _(c: Case):
    c.out.mkdir()
    (c.out / "predictions.json").write_text("[]")
    return _predict(c), "predictions.json"


@fault("predict --output is a file", "io")
def _(c: Case):
    argv = _predict(c)
    argv[argv.index("--output") + 1] = str(c.file("taken", "mine"))
    return argv, "taken"


@fault("predict --output below a file", "io")
def _(c: Case):
    blocker = c.file("blocker", "mine")
    argv = _predict(c)
    argv[argv.index("--output") + 1] = str(blocker / "sub")
    return argv, "blocker"


@fault("predict: disk full while writing pictures", "io")
def _(c: Case):
    fail_writes(c.monkeypatch, c.out, errno.ENOSPC, after_bytes=100)
    return _predict(c), str(c.out / "images" / "val_000000.png")


@fault("export --output is the --model file", "io")
def _(c: Case):
    model = c.file("model.pt2", c.world.checkpoint.read_bytes())
    return ["export", "--model", str(model), "--output", str(model), "--no-check"], "model.pt2"


@fault("export --output is a folder", "io")
def _(c: Case):
    c.out.mkdir()
    return ["export", "--model", str(c.world.checkpoint), "--output", str(c.out), "--format", "onnx"], str(c.out)


@fault("export into a read-only folder", "io")
def _(c: Case):
    fail_writes(c.monkeypatch, c.out, errno.EROFS)
    return ["export", "--model", str(c.world.checkpoint), "--output", str(c.out / "m.ts"), "--no-check"], \
        str(c.out / "m.ts")


@fault("data convert --out inside the source", "io")
def _(c: Case):
    (c.inputs / "voc").mkdir(parents=True)
    return ["data", "convert", str(c.inputs / "voc"), "--from", "voc", "--out", str(c.inputs / "voc" / "coco")], \
        str(c.inputs / "voc")


@fault("data convert --out is a file", "io")
def _(c: Case):
    (c.inputs / "voc").mkdir(parents=True)
    return ["data", "convert", str(c.inputs / "voc"), "--from", "voc", "--out", str(c.file("x", "mine"))], "x"


@fault("data convert: permission denied while copying images", "io")
def _(c: Case):
    src = c.inputs / "voc"
    (src / "JPEGImages").mkdir(parents=True)
    (src / "Annotations").mkdir()
    Image.new("RGB", (20, 10)).save(src / "JPEGImages" / "a.jpg")
    (src / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><object><name>cat</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
        "<xmax>12</xmax><ymax>9</ymax></bndbox></object></annotation>")
    fail_writes(c.monkeypatch, c.out / "images", errno.EACCES)
    return ["data", "convert", str(src), "--from", "voc", "--out", str(c.out), "--copy"], str(c.out / "images" / "a.jpg")


@fault("data synth --out holds a dataset", "io")
def _(c: Case):
    data = c.dataset()
    return ["data", "synth", "--out", str(data), "--num_train", "1", "--num_val", "1"], str(data)


@fault("data synth --out is a file", "io")
def _(c: Case):
    return ["data", "synth", "--out", str(c.file("x", "mine")), "--num_train", "1", "--num_val", "1"], "x"


@fault("data synth: permission denied", "io")
def _(c: Case):
    fail_writes(c.monkeypatch, c.out, errno.EACCES)
    return ["data", "synth", "--out", str(c.out), "--num_train", "1", "--num_val", "1"], str(c.out)


@fault("data stats --out is the annotation file", "io")
def _(c: Case):
    data = c.dataset()
    ann = data / "annotations" / "instances_val.json"
    return ["data", "stats", str(ann), "--out", str(ann)], "instances_val.json"


@fault("data stats: disk full", "io")
def _(c: Case):
    fail_writes(c.monkeypatch, c.out, errno.ENOSPC, after_bytes=1000)
    return ["data", "stats", str(c.world.data), "--out", str(c.out / "stats.png")], str(c.out / "stats.png")


@fault("data check --json is the annotation file", "io")
def _(c: Case):
    data = c.dataset()
    ann = data / "annotations" / "instances_train.json"
    return ["data", "check", str(data), "--json", str(ann)], "instances_train.json"


@fault("visualize: earlier pictures in --output", "io")
def _(c: Case):
    c.out.mkdir()
    (c.out / "val_000000_decoder_attention.png").write_bytes(b"mine")
    return ["visualize", "attention", str(c.world.image), "--model", str(c.world.checkpoint), "--output", str(c.out)], \
        "val_000000_decoder_attention.png"


@fault("plot: read-only output folder", "io")
def _(c: Case):
    c.file("run/log.txt", json.dumps({"epoch": 0, "train_loss": 1.0}) + "\n")
    fail_writes(c.monkeypatch, c.out, errno.EROFS)
    return ["plot", "logs", str(c.inputs / "run"), "--fields", "loss", "--output", str(c.out / "logs.png")], \
        str(c.out / "logs.png")


@fault("eval --output_dir is a file", "io")
def _(c: Case):
    taken = c.file("taken", "mine")
    return ["eval", "--model", str(c.world.checkpoint), "--coco_path", str(c.world.data), "--device", "cpu",
            "--num_workers", "0", "--output_dir", str(taken)], "taken"


@fault("train --output_dir is a file", "io")
def _(c: Case):
    argv = _train(c.world.data, c)
    argv[argv.index("--output_dir") + 1] = str(c.file("taken", "mine"))
    return argv, "taken"


# ------------------------------------------------------------------------------------------------ signals (in-process)
class _InterruptedFile(io.FileIO):
    """A file whose first write sends SIGINT to this process half-way (Ctrl-C while a file is being written)."""

    def write(self, data) -> int:
        written = super().write(bytes(data[: len(data) // 2]))
        signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt here
        return written


@fault("interrupted (SIGINT) while writing a dataset", "signal", code=130, stream="interrupt",
       after=lambda case: _whole_images_only(case.out))
def _(c: Case):
    real_open = builtins.open
    opened = Counter()

    def interrupting_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and "images" in os.fspath(file) and "w" in mode:
            opened["images"] += 1
            if opened["images"] == 3:  # two images written whole, the third interrupted
                return io.BufferedWriter(_InterruptedFile(os.fspath(file), "w"))
        return real_open(file, mode, *args, **kwargs)

    c.monkeypatch.setattr(builtins, "open", interrupting_open)
    return ["data", "synth", "--out", str(c.out), "--num_train", "5", "--num_val", "1", "--image_size", "32"], ""


def _whole_images_only(out: Path) -> None:
    images = sorted((out / "images").iterdir())
    assert [p.name for p in images] == ["train_000000.png", "train_000001.png"]  # the third was removed
    for path in images:
        with Image.open(path) as image:
            image.load()
    assert not (out / "annotations" / "instances_train.json").exists()


# ------------------------------------------------------------------------------------------------ simulated OS failures
class _FullDiskFile(io.FileIO):
    """A file whose writes fail with ``code`` once ``room`` bytes are written (what a full disk does)."""

    def __init__(self, path: str, mode: str, code: int, room: int) -> None:
        super().__init__(path, mode)
        self.code, self.room, self.path = code, room, path

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(self.code, os.strerror(self.code), self.path)
        self.room -= len(data)
        return super().write(data)


def fail_writes(monkeypatch: pytest.MonkeyPatch, under: Path, code: int, after_bytes: int | None = None) -> None:
    """Make every write to a file under ``under`` fail with ``code`` (tests may run as root, which ignores
    permissions): at ``open`` (read-only file system, permission denied), or after ``after_bytes`` (disk full)."""
    real_open, real_os_open = builtins.open, os.open
    prefix = str(under.absolute())

    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(prefix)

    def refusing_open(file, mode="r", *args, **kwargs):
        if not (inside(file) and any(flag in mode for flag in "wax+")):
            return real_open(file, mode, *args, **kwargs)
        if after_bytes is None:
            raise OSError(code, os.strerror(code), os.fspath(file))
        raw = _FullDiskFile(os.fspath(file), mode.replace("b", "").replace("t", ""), code, after_bytes)
        buffered = io.BufferedRandom(raw) if "+" in mode else io.BufferedWriter(raw)
        return buffered if "b" in mode else io.TextIOWrapper(buffered, encoding=kwargs.get("encoding"))

    def refusing_os_open(path, flags, *args, **kwargs):
        if after_bytes is None and inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    monkeypatch.setattr(io, "open", refusing_open)
    monkeypatch.setattr(os, "open", refusing_os_open)


# ------------------------------------------------------------------------------------------------ the checks
def _tree_hashes(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (symbolic links by their target)."""
    hashes = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]


@pytest.mark.parametrize("kind", list(FAULTS))
def test_fault(kind, world, tmp_path, monkeypatch, capsys):
    spec = FAULTS[kind]
    case = Case(tmp_path / "case", world, monkeypatch)
    case.inputs.mkdir(parents=True)
    argv, culprit = spec.make(case)
    world_before, case_before = _tree_hashes(world.root), _tree_hashes(case.root)
    monkeypatch.chdir(case.root)

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    monkeypatch.undo()
    out, err = capsys.readouterr()

    assert code == spec.code, f"{kind}: exit code {code}, expected {spec.code}\n{out}\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = _error_lines(err)
    if spec.stream == "interrupt":
        assert lines == ["interrupted"], lines
    elif spec.stream == "err":
        if spec.usage:  # argparse: its usage (several lines), then one error line
            assert lines[0].startswith("usage: detr ") and re.match(r"detr \S+( \S+)?: error: ", lines[-1]), lines
            lines = lines[-1:]
        assert len(lines) == 1 and lines[0].startswith(f"detr {argv[0]}: error: "), \
            f"{kind}: expected one error line, got {lines}"
        assert culprit in lines[0], f"{kind}: {culprit!r} not named in {lines[0]!r}"
    else:
        assert culprit in out, f"{kind}: {culprit!r} not named in the report:\n{out}"
        assert not [line for line in lines if "error:" in line], lines
    # inputs unchanged, nothing written outside the output folder, no partial file inside it
    assert _tree_hashes(world.root) == world_before, f"{kind}: a shared input changed"
    after = _tree_hashes(case.root)
    changed = {p for p in case_before if after.get(p) != case_before[p]}
    assert not changed, f"{kind}: inputs changed: {sorted(changed)}"
    outside = {p for p in set(after) - set(case_before) if not p.startswith("out" + os.sep)}
    assert not outside, f"{kind}: written outside the output folder: {sorted(outside)}"
    leftovers = [p for p in after if TEMPORARY_FILE.match(Path(p).name)]
    assert not leftovers, f"{kind}: partial files left: {leftovers}"
    assert not (case.out / "pwned").exists()
    if spec.after is not None:
        spec.after(case)


# ------------------------------------------------------------------------------------------------ exported models (library)
# No command loads TorchScript or torch.export files (``detr predict --onnx`` runs ONNX files, counted above);
# ``inference.runtimes.load_exported`` does, for library users and the runtimes.
EXPORTED_DAMAGE = {
    "truncated": lambda whole: whole[: len(whole) // 2],
    "garbage": lambda whole: b"garbage" * 10,
    "empty": lambda whole: b"",
}


@pytest.fixture(scope="module")
def exported(world, tmp_path_factory) -> dict[str, bytes]:
    """Whole exported files: a real TorchScript trace of the tiny model, a zip archive as a stand-in .pt2
    (exporting a real program takes ~15 s), a real-looking ONNX header."""
    from torchdetr.inference.export import export_torchscript
    from torchdetr.inference.loading import load_model

    folder = tmp_path_factory.mktemp("exported")
    export_torchscript(load_model(world.checkpoint).model, folder / "tiny.ts", sample_size=(IMAGE_SIZE, 85), check=False)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("model/archive_format", "pt2")
        zipped.writestr("model/models/model.json", "{}" * 500)
    return {".ts": (folder / "tiny.ts").read_bytes(), ".pt2": archive.getvalue(), ".onnx": b"\x08\x07" + b"\x12" * 64}


@pytest.mark.parametrize("damage", list(EXPORTED_DAMAGE))
@pytest.mark.parametrize("suffix", [".ts", ".pt2", ".onnx"])
def test_a_damaged_exported_model_is_one_line_naming_it(suffix, damage, exported, tmp_path, caplog):
    from torchdetr.errors import InputFileError
    from torchdetr.inference.runtimes import load_exported

    if suffix == ".onnx":
        require_package("onnxruntime")
    path = tmp_path / f"model{suffix}"
    path.write_bytes(EXPORTED_DAMAGE[damage](exported[suffix]))
    with pytest.raises(InputFileError) as caught:
        load_exported(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a loadable ") and "\n" not in message
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]  # torch logs none either


# ------------------------------------------------------------------------------------------------ signals (subprocesses)
def _detr(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "torchdetr", *args], env=env, cwd=ROOT, text=True, **kwargs)


SIGNAL_KINDS = ("output pipe closed early",)


def test_a_closed_output_pipe_is_not_a_traceback(world):
    read, write = os.pipe()
    os.close(read)
    process = _detr("data", "stats", str(world.data), stdout=write, stderr=subprocess.PIPE)
    os.close(write)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0 and "Traceback" not in stderr and "Error" not in stderr, stderr


# ------------------------------------------------------------------------------------------------ the count
# kinds proven elsewhere, counted here: the kill test (SIGKILL at 8 moments of a training run)
ELSEWHERE = {"signal": ["SIGKILL during training (tests/test_train_kill.py)"]}


def _kinds_per_area() -> Counter:
    per_area = Counter(spec.area for spec in FAULTS.values())
    per_area["checkpoint"] += 1  # damaged exported models (9 cases: .ts/.pt2/.onnx × truncated/garbage/empty)
    per_area["signal"] += len(SIGNAL_KINDS) + len(ELSEWHERE["signal"])
    return per_area


def test_the_corpus_is_big_enough():
    per_area = _kinds_per_area()
    assert set(per_area) == set(AREAS), per_area
    assert sum(per_area.values()) >= MIN_KINDS, per_area


def corpus_table() -> str:
    """The kinds per area, as the rows of docs/reliability.md's table."""
    per_area = _kinds_per_area()
    return "\n".join(f"| {area} | {per_area[area]} |" for area in AREAS)

