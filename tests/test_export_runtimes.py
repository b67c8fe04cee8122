"""``detr export --format openvino`` and ``--format int8``: checked against eager PyTorch, usable by predict.

Oracles: the eager model (``verify_export``: 1e-4 for OpenVINO, ``INT8_TOLERANCE`` for INT8) and
``detr predict --model`` on the same images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from torchdetr.cli import main
from torchdetr.inference.detector import Detector
from torchdetr.inference.export_contract import INT8_TOLERANCE, TOLERANCE

from .conftest import DATA, require, require_package
from .test_predict import NAMES, write_tiny_checkpoint

IMAGE_SIZE = "128"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth")  # image_size 128


def _predict(tmp_path, images, *flags) -> list[dict]:
    out = tmp_path / "out"
    assert main(["predict", *images, *flags, "--output", str(out), "--threshold", "0", "--no_render", "--device", "cpu"]) == 0
    return sorted(json.loads((out / "predictions.json").read_text()), key=lambda r: (r["image_id"], -r["score"]))


def _bccd_images(count: int) -> list[str]:
    folder = require(DATA / "bccd" / "images")
    return [str(p) for p in sorted(folder.glob("*.jpg"))[:count]]


def test_openvino_export_passes_the_check_and_predicts_like_pytorch(tmp_path, checkpoint, capsys):
    require_package("openvino")
    require_package("onnxscript")
    xml = tmp_path / "model.xml"
    assert main(["export", "--model", str(checkpoint), "--output", str(xml), "--image_size", IMAGE_SIZE]) == 0
    printed = capsys.readouterr().out
    assert f"check passed (tolerance {TOLERANCE:.0e}" in printed and xml.with_suffix(".bin").is_file()
    detector = Detector.from_exported(xml, device="cpu")
    assert detector.category_names == NAMES and detector.image_size == 128
    images = _bccd_images(2)
    ours = _predict(tmp_path / "ov", images, "--exported", str(xml))
    theirs = _predict(tmp_path / "pt", images, "--model", str(checkpoint))
    assert len(ours) == len(theirs) > 0
    assert np.allclose([r["score"] for r in ours], [r["score"] for r in theirs], atol=TOLERANCE)


def test_int8_export_is_calibrated_on_data_and_agrees_with_pytorch(tmp_path, checkpoint, capsys):
    require_package("onnxruntime.quantization")
    require_package("onnxscript")
    data = require(DATA / "bccd")
    assert main(["export", "--model", str(checkpoint), "--output", str(tmp_path / "x.onnx"), "--format", "int8"]) == 2
    assert "--data" in capsys.readouterr().err
    path = tmp_path / "model_int8.onnx"
    assert main(["export", "--model", str(checkpoint), "--output", str(path), "--format", "int8", "--data", str(data),
                 "--calibration_images", "4", "--image_size", IMAGE_SIZE]) == 0
    printed = capsys.readouterr().out
    assert f"check passed (tolerance {INT8_TOLERANCE:.0e}" in printed
    import onnx

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantised
    images = _bccd_images(2)
    ours = _predict(tmp_path / "int8", images, "--exported", str(path))
    theirs = _predict(tmp_path / "pt", images, "--model", str(checkpoint))
    assert len(ours) == len(theirs) > 0
    # the scores of the same queries: sorted per image, they move by at most the stated drift
    assert np.abs(np.subtract([r["score"] for r in ours], [r["score"] for r in theirs])).max() < INT8_TOLERANCE
