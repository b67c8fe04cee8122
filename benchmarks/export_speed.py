"""Exported DETR vs eager PyTorch: export time, file size, max difference and inference speed.

For each model (random weights) the script exports ONNX (run with onnxruntime) and a TorchScript
trace, checks both against eager PyTorch on other image sizes (``torchdetr.inference.verify.verify_export``),
then times one image at the export size with the same number of threads for every engine. Runs
are interleaved (eager, onnxruntime, TorchScript, eager, …) so that a change of machine load hits
all engines alike; the baseline is eager PyTorch in the same process. One thread by default (see
``--threads``): on a shared machine, multi-threaded timings measure the other jobs more than the model.

    python benchmarks/export_speed.py                       # tiny models + R50 at 800×1066, writes the table
    python benchmarks/export_speed.py --models tiny --runs 20 --threads 2 --output ''
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime
import torch
from machine import cpu_name
from results_file import add_output_arguments, output_path, write_results

from torchdetr.config import DETRConfig
from torchdetr.inference import export
from torchdetr.inference.runtimes import OnnxRunner, load_exported
from torchdetr.inference.verify import verify_export
from torchdetr.models.build import build_detector

MODELS: dict[str, tuple[DETRConfig, tuple[int, int]]] = {
    # the test suite's tiny model
    "tiny": (DETRConfig(backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64,
                        num_queries=5, num_classes=3, backbone_weights="none"), (96, 128)),
    # the same with the mask head (its GroupNorm(8) layers need hidden_dim 128 and 8 heads)
    "tiny_segm": (DETRConfig(backbone="resnet18", hidden_dim=128, nheads=8, enc_layers=1, dec_layers=1,
                             dim_feedforward=64, num_queries=5, num_classes=3, backbone_weights="none", masks=True),
                  (96, 128)),
    # the official detr_resnet50 architecture (frozen batch norm, 6+6 layers, 100 queries, 91 classes)
    "r50": (DETRConfig(aux_loss=False), (800, 1066)),
}


@dataclass
class Row:
    model: str
    size: tuple[int, int]
    export_s: dict[str, float]
    file_mb: dict[str, float]
    diffs: dict[str, dict[str, float]]
    latency_s: dict[str, float]




def median_latencies(engines: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds per call of each engine; one warm-up call each, then ``runs`` interleaved rounds."""
    for call in engines.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(runs):
        for name, call in engines.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench(name: str, runs: int, threads: int, workdir: Path) -> Row:
    cfg, size = MODELS[name]
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    paths = {"onnx": workdir / f"{name}.onnx", "torchscript": workdir / f"{name}.ts"}
    export_s, file_mb, diffs = {}, {}, {}
    for fmt, path in paths.items():
        start = time.perf_counter()
        export.export_model(model, path, fmt, sample_size=size, check=False)
        export_s[fmt] = time.perf_counter() - start
        file_mb[fmt] = path.stat().st_size / 2**20
        diffs[fmt] = verify_export(model, path, fmt, sample_size=size).differences
        print(f"{name}: {fmt} exported in {export_s[fmt]:.1f} s, {file_mb[fmt]:.1f} MB, max diff {diffs[fmt]}", flush=True)

    images = torch.randn(1, 3, *size)
    onnx_runner = OnnxRunner(paths["onnx"], providers=["CPUExecutionProvider"], threads=threads)
    script_runner = load_exported(paths["torchscript"])
    with torch.no_grad():
        latency = median_latencies({
            "eager": lambda: model(images),
            "onnxruntime": lambda: onnx_runner(images),
            "torchscript": lambda: script_runner(images),
        }, runs)
    print(f"{name}: median latency " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in latency.items()), flush=True)
    return Row(name, size, export_s, file_mb, diffs, latency)


def markdown(rows: list[Row], threads: int, runs: int, load_before: str, load_after: str) -> str:
    lines = [
        "# Export: exported model vs eager PyTorch (CPU)",
        "",
        "Produced by `python benchmarks/export_speed.py` (random weights; one image at the export size; "
        f"median of {runs} interleaved runs after one warm-up; baseline = eager PyTorch in the same process).",
        "",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical cores, {threads} thread{'s' if threads > 1 else ''} for every engine",
        f"- torch {torch.__version__}, onnxruntime {onnxruntime.__version__} (CPUExecutionProvider), "
        f"Python {platform.python_version()}",
        f"- load average (1, 5, 15 min) before: {load_before}; after: {load_after} "
        "(a machine shared with other jobs: latencies are noisy, the ratios less so)",
        "",
        "| model | input | format | export s | file MB | max diff logits | max diff boxes | max diff masks "
        "| latency ms | speed vs eager |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        eager = row.latency_s["eager"]
        size = f"{row.size[0]}×{row.size[1]}"
        lines.append(f"| {row.model} | {size} | eager PyTorch | – | – | – | – | – | {eager * 1000:.0f} | 1.00× |")
        for fmt, engine in (("onnx", "onnxruntime"), ("torchscript", "torchscript")):
            d = row.diffs[fmt]
            masks = f"{d['pred_masks']:.1e}" if "pred_masks" in d else "–"
            lines.append(
                f"| {row.model} | {size} | {fmt} | {row.export_s[fmt]:.1f} | {row.file_mb[fmt]:.0f} | "
                f"{d['pred_logits']:.1e} | {d['pred_boxes']:.1e} | {masks} | {row.latency_s[engine] * 1000:.0f} | "
                f"{eager / row.latency_s[engine]:.2f}× |"
            )
    lines += ["", "Max diff: max |exported − eager| over the check inputs of `verify_export` (one image of "
              "another size, two images of different sizes padded together). Speed vs eager > 1 means faster."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of every engine (default 1: on a CPU shared with other jobs, PyTorch's OpenMP "
                             "barriers stall whenever another job takes one of the threads' cores)")
    add_output_arguments(parser, Path(__file__).parent / "results" / "export_speed.md")
    args = parser.parse_args()
    output = output_path(args.output, args.overwrite)
    torch.set_num_threads(args.threads)
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(name, args.runs, args.threads, Path(tmp)) for name in args.models]
    load_after = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = markdown(rows, args.threads, args.runs, load_before, load_after)
    write_results(output, text)


if __name__ == "__main__":
    main()
