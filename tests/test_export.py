"""Export round trips (ONNX with onnxruntime, TorchScript, torch.export) compared with the eager model.

Every comparison computes the eager outputs here, on inputs of other sizes and batch sizes than
the export sample, rather than trusting the exporter's own check. Exports are made once per
module (they take seconds each) on tiny models: resnet18, 1+1 layers, 5 queries.
"""

from __future__ import annotations

import argparse
import urllib.error
from pathlib import Path

import pytest
import torch

from torchdetr.cli import main
from torchdetr.config import DETRConfig
from torchdetr.inference import export
from torchdetr.models.build import build_detector
from torchdetr.models.postprocess import PostProcess
from torchdetr.structures import nested_tensor_from_tensor_list

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOL = 1e-4
SAMPLE = (64, 80)  # export sample (H, W); the inputs below are all of other sizes
DETECTION = DETRConfig(backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64,
                       num_queries=5, num_classes=3, backbone_weights="none")
# the mask head's GroupNorm(8) layers need hidden_dim/16 and hidden_dim + nheads divisible by 8
SEGMENTATION = DETECTION.replace(hidden_dim=128, nheads=8, masks=True)


def _model(cfg: DETRConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_detector(cfg)
    # a trained-looking backbone: non-trivial batch-norm statistics instead of (0, 1)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
    return model.eval()


def _images(*sizes: tuple[int, int], seed: int = 7) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=generator) for h, w in sizes]


# one image of another size, two of different sizes padded together, three at once
CASES = [[(75, 57)], [(70, 90), (50, 101)], [(40, 60), (96, 45), (66, 66)]]


def _assert_close_to_eager(model: torch.nn.Module, runner, sizes: list[tuple[int, int]], names: tuple[str, ...]) -> None:
    batch = nested_tensor_from_tensor_list(_images(*sizes))
    with torch.no_grad():
        expected = model(batch)
    got = runner(batch)
    assert set(names) <= set(got)
    for name in names:
        assert got[name].shape == expected[name].shape, name
        assert got[name].dtype == torch.float32, name
        diff = (got[name] - expected[name]).abs().max().item()
        assert diff < TOL, f"{name}: max abs difference {diff:.2e} on sizes {sizes}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread here: on a CPU shared with other jobs, two OpenMP threads stall each other (10-50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detection_model() -> torch.nn.Module:
    return _model(DETECTION, seed=0)


@pytest.fixture(scope="module")
def segmentation_model() -> torch.nn.Module:
    return _model(SEGMENTATION, seed=1)


@pytest.fixture(scope="module")
def detection_onnx(detection_model, tmp_path_factory) -> tuple[Path, float | None]:
    path = tmp_path_factory.mktemp("onnx") / "detr.onnx"
    return path, export.export_onnx(detection_model, path, sample_size=SAMPLE)


@pytest.fixture(scope="module")
def segmentation_onnx(segmentation_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "detr_segm.onnx"
    export.export_onnx(segmentation_model, path, sample_size=SAMPLE, check=False)
    return path


# --------------------------------------------------------------------------------------- ONNX
def test_onnx_detection_round_trip(detection_model, detection_onnx):
    path, reported = detection_onnx
    assert reported is not None and 0 <= reported < TOL
    runner = export.OnnxRunner(path)
    assert runner.output_names == ("pred_logits", "pred_boxes") and not runner.has_masks
    assert runner.input_shape == ("batch", 3, "height", "width")
    for sizes in CASES:
        _assert_close_to_eager(detection_model, runner, sizes, export.BOX_OUTPUTS)


def test_onnx_segmentation_round_trip(segmentation_model, segmentation_onnx):
    runner = export.OnnxRunner(segmentation_onnx)
    assert runner.has_masks and runner.metadata["torchdetr.masks"] == "true"
    for sizes in CASES[:2]:
        _assert_close_to_eager(segmentation_model, runner, sizes, (*export.BOX_OUTPUTS, "pred_masks"))
    out = runner(_images((70, 90)))
    assert out["pred_masks"].shape == (1, 5, 18, 23)  # ceil(H/4), ceil(W/4)


def test_onnx_runner_with_postprocess_matches_eager(detection_model, detection_onnx):
    images = _images((61, 83), (77, 52))
    sizes = torch.tensor([[480, 640], [600, 410]])
    with torch.no_grad():
        expected = PostProcess()(detection_model(images), sizes)
    got = PostProcess()(export.OnnxRunner(detection_onnx[0])(images), sizes)
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(e["labels"], g["labels"])
        torch.testing.assert_close(g["scores"], e["scores"], atol=TOL, rtol=0)
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-2, rtol=0)  # pixels of a 640-px image


def test_onnx_runner_accepts_tensor_and_reports_metadata(detection_model, detection_onnx):
    runner = export.OnnxRunner(detection_onnx[0])
    images = torch.stack(_images((50, 70), (50, 70)))
    with torch.no_grad():
        expected = detection_model(images)
    got = runner(images)  # a [B, 3, H, W] tensor: no padding
    assert (got["pred_boxes"] - expected["pred_boxes"]).abs().max() < TOL
    assert runner.metadata["torchdetr.num_classes"] == "3"
    assert runner.metadata["torchdetr.num_queries"] == "5"


def test_onnx_runner_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx"):
        export.OnnxRunner(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.onnx"):
        export.OnnxRunner(junk)


def test_static_onnx_export_fixes_the_shape(detection_model, tmp_path):
    path = tmp_path / "static.onnx"
    diff = export.export_onnx(detection_model, path, sample_size=SAMPLE, dynamic=False)
    assert diff is not None and diff < TOL
    runner = export.OnnxRunner(path)
    assert runner.input_shape == (1, 3, *SAMPLE)
    _assert_close_to_eager(detection_model, runner, [SAMPLE], export.BOX_OUTPUTS)
    with pytest.raises(ValueError, match="fixed input shape"):
        runner(_images((70, 90)))


def test_export_restores_model_mode_and_aux_loss():
    model = _model(DETECTION, seed=3).train()
    assert model.aux_loss
    with export._export_mode(model):
        assert not model.training and not model.aux_loss
    assert model.training and model.aux_loss and all(m.training for m in model.modules())


def test_wrapper_rejects_mismatched_mask(detection_model):
    wrapper = export.ExportWrapper(detection_model)
    with pytest.raises(ValueError, match=r"mask \[B, H, W\]"):
        wrapper(torch.zeros(1, 3, 64, 64), torch.zeros(1, 32, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="DETR and DETRsegm"):
        export.ExportWrapper(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------ TorchScript, torch.export
def test_torchscript_round_trip(detection_model, segmentation_model, tmp_path):
    for name, model, names in (("det", detection_model, export.BOX_OUTPUTS),
                               ("segm", segmentation_model, (*export.BOX_OUTPUTS, "pred_masks"))):
        path = tmp_path / f"{name}.ts"
        assert export.export_torchscript(model, path, sample_size=SAMPLE, check=False) is None
        runner = export.load_exported(path)  # format from the suffix
        for sizes in CASES:
            _assert_close_to_eager(model, runner, sizes, names)


def test_program_round_trip(detection_model, tmp_path):
    path = tmp_path / "det.pt2"
    assert export.export_program(detection_model, path, sample_size=SAMPLE, check=False) is None
    program = torch.export.load(path)
    assert len(program.range_constraints) == 3  # batch, height, width: the mask's sizes are the images' ones
    runner = export.load_exported(path)
    for sizes in CASES:
        _assert_close_to_eager(detection_model, runner, sizes, export.BOX_OUTPUTS)
    with pytest.raises(ValueError, match="outside the exported range"):  # a 1-pixel feature map: below the minimum
        runner(_images((20, 20)))


def test_check_export_detects_a_different_model(detection_model, tmp_path):
    path = tmp_path / "detr.ts"
    export.export_torchscript(detection_model, path, sample_size=SAMPLE, check=False)
    images = _images((64, 70))
    assert export.check_export(detection_model, path, "torchscript", images) < TOL
    other = _model(DETECTION, seed=5)
    assert export.check_export(other, path, "torchscript", images) > 1e-2


def test_format_from_path():
    assert export.format_from_path("a/b.onnx") == "onnx"
    assert export.format_from_path("b.pt2") == "program"
    assert export.format_from_path("b.ts") == "torchscript"
    with pytest.raises(ValueError, match=r"b\.bin"):
        export.format_from_path("b.bin")


# ---------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoint(detection_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": detection_model.state_dict(), "args": argparse.Namespace(**DETECTION.to_dict())}, path)
    return path


def test_cli_export_onnx_from_checkpoint(checkpoint, detection_model, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    code = main(["export", "--model", str(checkpoint), "--output", str(out), "--image_size", "64"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "max |exported - eager|: pred_logits" in printed and "check passed" in printed
    runner = export.OnnxRunner(out)
    assert runner.metadata["torchdetr.source"] == str(checkpoint)
    _assert_close_to_eager(detection_model, runner, CASES[1], export.BOX_OUTPUTS)


def test_cli_export_torchscript_without_check(checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.model"
    code = main(["export", "--model", str(checkpoint), "--format", "torchscript", "--output", str(out),
                 "--image_size", "64", "--no-check"])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "max |exported" not in printed


def test_cli_check_failure_exits_1(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "validate_export", lambda *a, **k: {"pred_logits": 0.5, "pred_boxes": 0.0})
    code = main(["export", "--model", str(checkpoint), "--format", "torchscript", "--output", str(tmp_path / "m.ts"),
                 "--image_size", "64"])
    assert code == 1
    assert "check failed" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["no_such_model", "missing/file.pth"])
def test_cli_unknown_model_is_one_line(model, tmp_path, capsys):
    code = main(["export", "--model", model, "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and model in err and "Traceback" not in err


def test_cli_official_name_offline_is_one_line(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    code = main(["export", "--model", "detr_resnet50", "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "could not download" in err and "detr_resnet50" in err


def test_cli_rejects_opset_for_other_formats(checkpoint, tmp_path, capsys):
    code = main(["export", "--model", str(checkpoint), "--output", str(tmp_path / "m.pt2"), "--opset", "17"])
    assert code == 2
    assert "--opset applies to --format onnx only" in capsys.readouterr().err


def test_cli_formats_match_the_module():
    from torchdetr.cli import export as cli_export

    assert cli_export.FORMATS == export.FORMATS
