"""``detr benchmark`` on a tiny model: the table, the JSON, the Markdown with the machine, skipped formats.

No timing is asserted; the checks are on what is measured and reported (FLOPs against a closed form,
the faithful row as the 1.00× baseline, parity of the fast path, a missing package skipped with a note).
"""

from __future__ import annotations

import json

import pytest
import torch

from torchdetr.cli import main
from torchdetr.errors import MissingExtraError
from torchdetr.inference import benchmark
from torchdetr.structures import NestedTensor

from .test_predict import write_tiny_checkpoint


def test_model_flops_counts_a_convolution_in_closed_form():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)

    class Model(torch.nn.Module):
        def forward(self, samples: NestedTensor):
            return conv(samples.tensors)

    samples = NestedTensor(torch.zeros(2, 3, 16, 20), torch.zeros(2, 16, 20, dtype=torch.bool))
    assert benchmark.model_flops(Model(), samples) == 2 * 2 * 8 * 16 * 20 * 3 * 3 * 3  # 2·B·O·H·W·I·k²


def test_benchmark_writes_table_json_and_markdown_and_skips_missing_packages(tmp_path, capsys, monkeypatch):
    def missing(*args, **kwargs):
        raise MissingExtraError("OpenVINO needs the openvino package: pip install 'torchdetr[openvino]'")

    monkeypatch.setattr("torchdetr.inference.export.export_openvino", missing)
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth")
    out_json, out_md = tmp_path / "bench.json", tmp_path / "results" / "inference.md"
    flags = ["benchmark", "--model", str(checkpoint), "--formats", "pytorch,openvino,int8", "--size", "64x96",
             "--runs", "2", "--warmup", "1", "--threads", "1", "--json", str(out_json), "--markdown", str(out_md)]
    assert main(flags) == 0
    printed = capsys.readouterr().out
    assert "| faithful |" in printed and "| pytorch |" in printed
    report = json.loads(out_json.read_text())
    rows = {r["format"]: r for r in report["results"]}
    assert list(rows) == ["faithful", "pytorch", "openvino", "int8"]  # the baseline first
    assert rows["faithful"]["speedup"] == pytest.approx(1.0) and rows["faithful"]["max_logit_diff"] == 0.0
    assert rows["pytorch"]["status"] == "ok" and rows["pytorch"]["max_logit_diff"] <= 1e-4
    assert rows["pytorch"]["latency_ms_p95"] >= rows["pytorch"]["latency_ms_p50"] > 0
    assert rows["openvino"]["status"] == "skipped" and "pip install" in rows["openvino"]["note"]
    assert rows["int8"]["status"] == "skipped" and "--data" in rows["int8"]["note"]
    flops = report["gflop_per_image"] * 1e9
    assert rows["pytorch"]["gflops_per_s"] == pytest.approx(flops / (rows["pytorch"]["latency_ms_p50"] / 1e3) / 1e9)
    assert report["gemm_peak_gflops"]["fp32"] > 0 and report["machine"]["threads"] == 1
    markdown = out_md.read_text()
    assert report["machine"]["cpu"] in markdown and "GEMM peak" in markdown and "| openvino | skipped" in markdown
    assert main(flags) == 2  # an earlier result is not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["benchmark", "--model", str(checkpoint), "--formats", "tensorrt"]) == 2
    assert main(["benchmark", "--model", str(checkpoint), "--size", "big"]) == 2
