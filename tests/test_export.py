"""Export round trips (ONNX with onnxruntime, TorchScript, torch.export) compared with the eager model.

Every comparison computes the eager outputs here, on inputs of other sizes and batch sizes than
the export sample, rather than trusting the exporter's own check. Exports are made once per
module (they take seconds each) on tiny models: resnet18, 1+1 layers, 5 queries.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from torchdetr.cli import main
from torchdetr.config import DETRConfig
from torchdetr.errors import ConfigError, DownloadError, InputFileError
from torchdetr.inference import export, export_contract, verify
from torchdetr.inference.export_contract import BOX_OUTPUTS
from torchdetr.inference.runtimes import OnnxRunner, load_exported
from torchdetr.inference.verify import verify_export
from torchdetr.models.build import build_detector
from torchdetr.models.postprocess import PostProcess
from torchdetr.structures import nested_tensor_from_tensor_list

from .conftest import require_package
from .tiny import tiny_config

require_package("onnxruntime")
require_package("onnxscript")

TOL = 1e-4
SAMPLE = (64, 80)  # export sample (H, W); the inputs below are all of other sizes
DETECTION = tiny_config(nheads=4, dec_layers=1, num_classes=3)
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
def detection_onnx(detection_model, tmp_path_factory) -> tuple[Path, verify.ExportCheck | None]:
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
    assert reported is not None and reported.passed and 0 <= reported.worst < TOL
    assert set(reported.differences) == set(BOX_OUTPUTS)
    runner = OnnxRunner(path)
    assert runner.output_names == ("pred_logits", "pred_boxes") and not runner.has_masks
    assert runner.input_shape == ("batch", 3, "height", "width")
    for sizes in CASES:
        _assert_close_to_eager(detection_model, runner, sizes, BOX_OUTPUTS)


def test_onnx_segmentation_round_trip(segmentation_model, segmentation_onnx):
    runner = OnnxRunner(segmentation_onnx)
    assert runner.has_masks and runner.metadata["torchdetr.masks"] == "true"
    for sizes in CASES[:2]:
        _assert_close_to_eager(segmentation_model, runner, sizes, (*BOX_OUTPUTS, "pred_masks"))
    out = runner(_images((70, 90)))
    assert out["pred_masks"].shape == (1, 5, 18, 23)  # ceil(H/4), ceil(W/4)


def test_onnx_runner_with_postprocess_matches_eager(detection_model, detection_onnx):
    images = _images((61, 83), (77, 52))
    sizes = torch.tensor([[480, 640], [600, 410]])
    with torch.no_grad():
        expected = PostProcess()(detection_model(images), sizes)
    got = PostProcess()(OnnxRunner(detection_onnx[0])(images), sizes)
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(e["labels"], g["labels"])
        torch.testing.assert_close(g["scores"], e["scores"], atol=TOL, rtol=0)
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-2, rtol=0)  # pixels of a 640-px image


def test_onnx_runner_accepts_tensor_and_reports_metadata(detection_model, detection_onnx):
    runner = OnnxRunner(detection_onnx[0])
    images = torch.stack(_images((50, 70), (50, 70)))
    with torch.no_grad():
        expected = detection_model(images)
    got = runner(images)  # a [B, 3, H, W] tensor: no padding
    assert (got["pred_boxes"] - expected["pred_boxes"]).abs().max() < TOL
    assert runner.metadata["torchdetr.num_classes"] == "3"
    assert runner.metadata["torchdetr.num_queries"] == "5"


def test_onnx_runner_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx"):
        OnnxRunner(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.onnx"):
        OnnxRunner(junk)


def test_static_onnx_export_fixes_the_shape(detection_model, tmp_path):
    path = tmp_path / "static.onnx"
    check = export.export_onnx(detection_model, path, sample_size=SAMPLE, dynamic=False)
    assert check is not None and check.passed
    runner = OnnxRunner(path)
    assert runner.input_shape == (1, 3, *SAMPLE)
    _assert_close_to_eager(detection_model, runner, [SAMPLE], BOX_OUTPUTS)
    with pytest.raises(InputFileError, match="fixed input shape"):
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
    with pytest.raises(ConfigError, match="DETR and DETRsegm"):
        export.ExportWrapper(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------ TorchScript, torch.export
def test_torchscript_round_trip(detection_model, segmentation_model, tmp_path):
    for name, model, names in (("det", detection_model, BOX_OUTPUTS),
                               ("segm", segmentation_model, (*BOX_OUTPUTS, "pred_masks"))):
        path = tmp_path / f"{name}.ts"
        assert export.export_torchscript(model, path, sample_size=SAMPLE, check=False) is None
        runner = load_exported(path)  # format from the suffix
        for sizes in CASES:
            _assert_close_to_eager(model, runner, sizes, names)


def test_program_round_trip(detection_model, tmp_path):
    path = tmp_path / "det.pt2"
    assert export.export_program(detection_model, path, sample_size=SAMPLE, check=False) is None
    program = torch.export.load(path)
    assert len(program.range_constraints) == 3  # batch, height, width: the mask's sizes are the images' ones
    runner = load_exported(path)
    for sizes in CASES:
        _assert_close_to_eager(detection_model, runner, sizes, BOX_OUTPUTS)
    with pytest.raises(InputFileError, match="outside the exported range"):  # a 1-pixel feature map: below the minimum
        runner(_images((20, 20)))


def test_verify_detects_a_different_model(detection_model, tmp_path):
    path = tmp_path / "detr.ts"
    export.export_torchscript(detection_model, path, sample_size=SAMPLE, check=False)
    batches = [_images((64, 70))]
    assert verify_export(detection_model, path, batches=batches).passed
    other = _model(DETECTION, seed=5)
    check = verify_export(other, path, batches=batches)
    assert not check.passed and check.worst > 1e-2


def _perturbed_copy(path: Path, out: Path, delta: float) -> Path:
    """The ONNX file with ``delta`` added to the class head's bias: every logit moves by exactly ``delta``."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    (bias,) = [t for t in proto.graph.initializer if t.name.endswith("class_embed.bias")]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + delta, bias.name))
    onnx.save(proto, str(out))
    return out


def test_verify_catches_a_perturbed_export_and_states_its_tolerance(detection_model, detection_onnx, tmp_path):
    """The one verify function: an export whose logits are off by 10× the tolerance fails, by 1/10 passes."""
    assert export_contract.TOLERANCE == TOL
    bad = verify_export(detection_model, _perturbed_copy(detection_onnx[0], tmp_path / "bad.onnx", 10 * TOL),
                        sample_size=SAMPLE)
    assert not bad.passed and bad.tolerance == TOL
    assert bad.differences["pred_logits"] == pytest.approx(10 * TOL, abs=TOL / 20)  # plus float rounding (~1e-6)
    assert bad.differences["pred_boxes"] < TOL  # the boxes do not depend on the class head
    close = verify_export(detection_model, _perturbed_copy(detection_onnx[0], tmp_path / "close.onnx", TOL / 10),
                          sample_size=SAMPLE)
    assert close.passed and close.differences["pred_logits"] == pytest.approx(TOL / 10, abs=TOL / 20)


def test_format_from_path():
    assert export_contract.format_from_path("a/b.onnx") == "onnx"
    assert export_contract.format_from_path("b.pt2") == "program"
    assert export_contract.format_from_path("b.ts") == "torchscript"
    with pytest.raises(ConfigError, match=r"b\.bin"):
        export_contract.format_from_path("b.bin")


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
    runner = OnnxRunner(out)
    assert runner.metadata["torchdetr.source"] == str(checkpoint)
    assert runner.input_size == (800, 1333)  # the checkpoint's validation resize, not the export sample
    _assert_close_to_eager(detection_model, runner, CASES[1], BOX_OUTPUTS)


def test_cli_export_torchscript_without_check(checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.model"
    code = main(["export", "--model", str(checkpoint), "--format", "torchscript", "--output", str(out),
                 "--image_size", "64", "--no-check"])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "max |exported" not in printed


def test_cli_keeps_an_earlier_export_unless_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "earlier.ts"
    out.write_bytes(b"an earlier export")
    argv = ["export", "--model", str(checkpoint), "--format", "torchscript", "--output", str(out), "--image_size", "64",
            "--no-check"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output {out}" in err and "--overwrite" in err
    assert out.read_bytes() == b"an earlier export"  # untouched
    assert main([*argv, "--overwrite"]) == 0
    assert torch.jit.load(str(out)) is not None  # replaced by a loadable export


def test_cli_check_failure_exits_1(checkpoint, tmp_path, monkeypatch, capsys):
    def perturbed(path, fmt=None):  # the written file, run with its logits moved by 0.5
        runner = load_exported(path, fmt)
        return lambda samples: {k: v + 0.5 if k == "pred_logits" else v for k, v in runner(samples).items()}

    monkeypatch.setattr(verify, "load_exported", perturbed)
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

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    code = main(["export", "--model", "detr_resnet50", "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "could not download" in err and "detr_resnet50" in err
    assert "Name or service not known" in err and str(tmp_path / "hub") in err  # the reason and the offline remedy
    from torchdetr.inference.loading import load_model

    with pytest.raises(DownloadError, match="detr_resnet50"):  # the library raises the same one error
        load_model("detr_resnet50")


def test_cli_rejects_opset_for_other_formats(checkpoint, tmp_path, capsys):
    code = main(["export", "--model", str(checkpoint), "--output", str(tmp_path / "m.pt2"), "--opset", "17"])
    assert code == 2
    assert "--opset applies to --format onnx only" in capsys.readouterr().err


def test_cli_reads_the_one_formats_definition_without_importing_torch():
    from torchdetr.cli import build_parser

    parser = build_parser(only="export")
    export_parser = parser._subparsers._group_actions[0].choices["export"]
    (fmt,) = [a for a in export_parser._actions if a.dest == "format"]
    assert fmt.choices is export_contract.FORMATS
    code = "import sys, torchdetr.cli.export; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
