"""``detr benchmark``: how fast a model runs on this machine in every runtime, against the faithful path.

For each format (``FORMATS``) the model is prepared (fast path, export), run ``warmup`` times, then
timed ``runs`` times on the same random batch [B, 3, H, W], the formats' runs interleaved: latency p50/p95, images/s, peak memory
added while running (resident set on CPU, allocator peak on CUDA), achieved GFLOP/s (the model's FLOPs
from ``torch.utils.flop_counter.FlopCounterMode``, counted once on the faithful model) and that as a
fraction of this machine's matrix-multiply peak, measured in the same run (``gemm_peak``). With a
dataset, AP and AP50 of each format on its first images (``--data``; the drift of a trained model), and
the largest logit difference from the faithful path on the timed batch. A format whose package is missing is skipped with a note.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, MissingExtraError
from ..structures import NestedTensor
from .loading import LoadedModel

log = logging.getLogger(__name__)

BASELINE = "faithful"
FORMATS = ("faithful", "pytorch", "pytorch-bf16", "pytorch-compile", "onnx", "openvino", "int8")
DEFAULT_FORMATS = ("faithful", "pytorch", "pytorch-bf16", "onnx", "openvino", "int8")
FORMAT_HELP = {
    "faithful": "the model as built: the original's computation (the baseline)",
    "pytorch": "torchdetr.optimize fp32 fast path",
    "pytorch-bf16": "torchdetr.optimize bf16 fast path",
    "pytorch-compile": "fp32 fast path + torch.compile (slow first call, not timed)",
    "onnx": "ONNX export on onnxruntime",
    "openvino": "OpenVINO IR on OpenVINO's CPU plugin (fp32)",
    "int8": "ONNX with INT8 convolutions (calibrated on --data) on onnxruntime",
}
GEMM_SIDE = 1024  # square matrices of the peak measurement
GEMM_SECONDS = 0.5  # time spent measuring each dtype's peak
MEMORY_SAMPLE_S = 0.002  # resident-set sampling period while a format runs
PERCENTILES = (50, 95)
Runner = Callable[[NestedTensor], dict[str, Tensor]]


def check_formats(formats: Sequence[str]) -> list[str]:
    """``formats`` (baseline first, each once) or ``ConfigError`` naming an unknown one."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"--formats: unknown format {unknown[0]!r} ({', '.join(FORMATS)})")
    return list(dict.fromkeys([BASELINE, *formats]))


def parse_size(text: str) -> tuple[int, int]:
    """``"800x1066"`` → (800, 1066); ``ConfigError`` for anything else."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size must be HxW in pixels (e.g. 800x1066), got {text!r}") from None
    if min(height, width) < 32:
        raise ConfigError(f"--size: both sides must be at least 32 px, got {text!r}")
    return height, width


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------
def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # a missing or broken optional package: no version
        return None


def machine_description(threads: int, device: torch.device) -> dict[str, Any]:
    """CPU, cores, threads, bf16/AMX support, GPU and library versions: what the numbers depend on."""
    flags = cpu_flags()
    machine = {
        "cpu": cpu_name(), "logical_cores": os.cpu_count(), "threads": threads,
        "avx512_bf16": "avx512_bf16" in flags, "amx": any(f.startswith("amx") for f in flags),
        "torch": torch.__version__, "onnxruntime": _version("onnxruntime"), "openvino": _version("openvino"),
        "python": platform.python_version(), "device": str(device),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(dtype: torch.dtype, device: torch.device, side: int = GEMM_SIDE, seconds: float = GEMM_SECONDS) -> float:
    """The best matrix-multiply rate (GFLOP/s) of ``side``×``side`` matrices in ``dtype`` on ``device``."""
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    flops = 2 * side**3
    torch.mm(a, b)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        best = max(best, flops / (time.perf_counter() - t0) / 1e9)
    return best


def model_flops(model: torch.nn.Module, samples: NestedTensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``samples`` (``FlopCounterMode``: matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(samples)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# Measuring one format
# ---------------------------------------------------------------------------------------------
def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Yields a dict whose ``mb`` is, afterwards, the peak memory added during the block (MiB)."""
    result = {"mb": float("nan")}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        result["mb"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        return
    before = _resident_bytes()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(MEMORY_SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["mb"] = max(0, max(peak[0], _resident_bytes()) - before) / 2**20


def time_runner(runner: Runner, samples: NestedTensor, warmup: int, runs: int, device: torch.device) -> list[float]:
    """Seconds of each of ``runs`` timed calls, after ``warmup`` untimed ones (``runs`` may be 0: warm-up only)."""
    with torch.inference_mode():
        for _ in range(warmup):
            runner(samples)
        _synchronize(device)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            runner(samples)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return times


@dataclass
class FormatResult:
    """One row of the benchmark; ``status`` is ``ok``, ``skipped`` (a package is missing) or ``failed``."""

    format: str
    status: str = "ok"
    note: str = ""
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    images_per_s: float | None = None
    speedup: float | None = None  # p50 latency of the faithful path / this one
    peak_memory_mb: float | None = None
    gflops_per_s: float | None = None
    peak_fraction: float | None = None  # of the measured GEMM peak of the format's compute dtype
    max_logit_diff: float | None = None  # max |logits - faithful logits| on the timed batch
    ap: float | None = None  # COCO AP@[.5:.95] (bbox) on the --data images
    ap50: float | None = None


@dataclass
class BenchmarkReport:
    model: str
    size: tuple[int, int]
    batch: int
    runs: int
    machine: dict[str, Any]
    gemm_peak_gflops: dict[str, float]
    gflop_per_image: float
    data: str | None = None
    ap_images: int = 0
    warmup: int = 0
    calibration_images: int = 0
    results: list[FormatResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        """The results as a Markdown table (also what the command prints)."""
        header = ("| format | latency p50 ms | p95 ms | img/s | × faithful | peak MB | GFLOP/s | of peak | "
                  "max Δ logits | AP | AP50 |")
        rows = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

        def number(value: float | None, spec: str) -> str:
            return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)

        for r in self.results:
            if r.status != "ok":
                rows.append(f"| {r.format} | {r.status}: {r.note} | | | | | | | | | |")
                continue
            rows.append(
                f"| {r.format} | {number(r.latency_ms_p50, '.1f')} | {number(r.latency_ms_p95, '.1f')} | "
                f"{number(r.images_per_s, '.2f')} | {number(r.speedup, '.2f')}× | {number(r.peak_memory_mb, '.0f')} | "
                f"{number(r.gflops_per_s, '.1f')} | {number(r.peak_fraction, '.0%')} | "
                f"{number(r.max_logit_diff, '.1e')} | {number(r.ap, '.3f')} | {number(r.ap50, '.3f')} |"
            )
        return "\n".join(rows)

    def markdown(self) -> str:
        """The table with the machine and the method described."""
        m = self.machine
        h, w = self.size
        lines = [
            "# Inference speed: every runtime against the faithful path",
            "",
            f"`detr benchmark --model {self.model} --formats {','.join(r.format for r in self.results)} "
            f"--size {h}x{w} --batch {self.batch} --threads {m['threads']} "
            f"--runs {self.runs} --warmup {self.warmup}"
            + (f" --data {self.data} --ap_images {self.ap_images} --calibration_images {self.calibration_images}"
               if self.data else "") + "`",
            "",
            f"- machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} thread(s); AVX-512 BF16: "
            f"{'yes' if m['avx512_bf16'] else 'no'}, AMX: {'yes' if m['amx'] else 'no'}; device {m['device']}"
            + (f" ({m['gpu']})" if m.get("gpu") else ""),
            f"- torch {m['torch']}, onnxruntime {m['onnxruntime'] or '–'}, openvino {m['openvino'] or '–'}, "
            f"Python {m['python']}; load average before: "
            + (", ".join(f"{v:.1f}" for v in m["load_average"]) if m.get("load_average") else "–"),
            f"- measured GEMM peak ({GEMM_SIDE}² matmul): fp32 {self.gemm_peak_gflops.get('fp32', 0):.0f} GFLOP/s, "
            f"bf16 {self.gemm_peak_gflops.get('bf16', 0):.0f} GFLOP/s; the model: "
            f"{self.gflop_per_image:.1f} GFLOP per {h}×{w} image (FlopCounterMode)",
            f"- batch {self.batch} of random images, {self.runs} timed runs per format after warm-up, interleaved across "
            "formats; × faithful = faithful p50 / this p50, in the same process; of peak: GFLOP/s over the measured "
            "GEMM peak of the format's dtype (fp32 for int8, whose integer kernels can exceed it)"
            + (f"; AP and AP50 (COCO bbox, score threshold 0) on the first {self.ap_images} images of {self.data}"
               if self.ap_images else ""),
            "",
            self.table(),
            "",
            "Formats: " + "; ".join(f"`{r.format}` {FORMAT_HELP[r.format]}" for r in self.results) + ".",
            "",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Preparing each format
# ---------------------------------------------------------------------------------------------
def prepare_runner(fmt: str, loaded: LoadedModel, workdir: Path, sample_size: tuple[int, int], threads: int,
                   calibration: Sequence[NestedTensor] | None) -> Runner:
    """The callable that runs ``loaded``'s model in ``fmt`` (exports are written under ``workdir``).

    Raises ``MissingExtraError`` when the format's package is missing, ``ConfigError`` when it cannot run here.
    """
    from . import export
    from .optimize import optimize
    from .runtimes import OnnxRunner, OpenVinoRunner

    model = loaded.model
    if fmt == BASELINE:
        return model
    if fmt == "pytorch":
        return optimize(model, "fp32")
    if fmt == "pytorch-bf16":
        return optimize(model, "bf16")
    if fmt == "pytorch-compile":
        return optimize(model, "fp32", compile=True)
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError(f"{fmt} runs on the CPU here (the benchmark's device is {next(model.parameters()).device})")
    if fmt == "onnx":
        path = workdir / "model.onnx"
        export.export_onnx(model, path, sample_size=sample_size, check=False)
        return OnnxRunner(path, providers=["CPUExecutionProvider"], threads=threads, spinning=False)
    if fmt == "openvino":
        path = workdir / "model.xml"
        export.export_openvino(model, path, sample_size=sample_size, check=False)
        return OpenVinoRunner(path, threads=threads)
    if fmt == "int8":
        if not calibration:
            raise ConfigError("needs --data (calibration images)")
        path = workdir / "model_int8.onnx"
        export.export_int8(model, path, calibration, sample_size=sample_size, check=False)
        return OnnxRunner(path, providers=["CPUExecutionProvider"], threads=threads, spinning=False)
    raise ConfigError(f"unknown format {fmt!r}")


def _compute_dtype(fmt: str) -> str:
    return "bf16" if fmt == "pytorch-bf16" else "fp32"


def coco_ap_of(runner: Runner, loaded: LoadedModel, ground_truth: str | Path | Any, images: Sequence[Any],
               pictures: Sequence[Any]) -> tuple[float, float]:
    """(AP, AP50) (COCO, bbox) of ``runner`` on ``pictures`` (the dataset's images with ids), threshold 0.

    ``ground_truth``: the annotation file (read and validated by ``load_coco_gt``) or a ``COCO`` already read
    with it (``run_benchmark`` reads it once, before timing, for every format).
    """
    from ..evaluation.coco import run_coco_eval
    from ..evaluation.ground_truth import load_coco_gt
    from .detector import Detector

    coco_gt = load_coco_gt(ground_truth) if isinstance(ground_truth, (str, Path)) else ground_truth
    detector = Detector(runner, loaded.category_names, threshold=0.0, image_size=loaded.image_size,
                        max_size=loaded.max_size, batch_size=1, focal=loaded.config.cls_loss == "focal")
    results = []
    for image, picture in zip(images, pictures):
        for d in detector.detect([picture])[0]:
            x1, y1, x2, y2 = d.box
            results.append({"image_id": image.image_id, "category_id": d.label, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": d.score})
    known = set(coco_gt.getCatIds())
    results = [r for r in results if r["category_id"] in known]
    coco_eval, _ = run_coco_eval(coco_gt, results, "bbox", [i.image_id for i in images], backend="auto")
    return float(coco_eval.stats[0]), float(coco_eval.stats[1])


def run_benchmark(
    loaded: LoadedModel,
    model_name: str,
    formats: Sequence[str] = DEFAULT_FORMATS,
    *,
    size: tuple[int, int] = (800, 1066),
    batch: int = 1,
    threads: int | None = None,
    runs: int = 10,
    warmup: int = 2,
    data: str | Path | None = None,
    ap_images: int = 50,
    calibration_images: int = 32,
    progress: Callable[[str], None] = print,
) -> BenchmarkReport:
    """Benchmark ``loaded``'s model in each of ``formats`` (the faithful baseline first); see the module docstring."""
    if batch < 1 or runs < 1 or warmup < 0 or ap_images < 0:
        raise ConfigError("--batch and --runs must be positive, --warmup and --ap_images at least 0")
    formats = check_formats(formats)
    threads = threads or torch.get_num_threads()
    if threads < 1:
        raise ConfigError(f"--threads must be positive, got {threads}")
    torch.set_num_threads(threads)
    device = next(loaded.model.parameters()).device
    loaded.model.eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *size, generator=generator).to(device)
    samples = NestedTensor(images, torch.zeros(batch, *size, dtype=torch.bool, device=device))

    progress("measuring the machine's matmul peak and the model's FLOPs …")
    peaks = {"fp32": gemm_peak(torch.float32, device), "bf16": gemm_peak(torch.bfloat16, device)}
    flops = model_flops(loaded.model, samples)
    report = BenchmarkReport(model=model_name, size=size, batch=batch, runs=runs,
                             machine=machine_description(threads, device), gemm_peak_gflops=peaks,
                             gflop_per_image=flops / batch / 1e9, data=str(data) if data else None, warmup=warmup,
                             calibration_images=calibration_images if data else 0)

    dataset: tuple[Any, list, list] | None = None
    calibration = None
    if data is not None:
        from ..evaluation.ground_truth import load_coco_gt
        from .dataset_images import dataset_images, load_images, preprocessed_batches

        ann_file, entries = dataset_images(data, limit=max(ap_images, calibration_images))
        pictures = load_images(entries)
        if ap_images:  # read and validated once, before any timing: a broken file fails at once, in one line
            dataset = (load_coco_gt(ann_file), entries[:ap_images], pictures[:ap_images])
            report.ap_images = len(dataset[1])
        calibration = preprocessed_batches(pictures[:calibration_images], loaded.image_size, loaded.max_size)

    with torch.inference_mode():
        reference = loaded.model(samples)["pred_logits"].float()
    with tempfile.TemporaryDirectory(prefix="detr-benchmark-") as tmp:
        runners: dict[str, Runner] = {}
        for fmt in formats:
            result = FormatResult(fmt)
            report.results.append(result)
            progress(f"{fmt}: preparing …")
            try:
                runner = prepare_runner(fmt, loaded, Path(tmp), size, threads, calibration)
                with peak_memory(device) as memory:  # the warm-up calls: first-call allocations included
                    time_runner(runner, samples, max(warmup, 1), 0, device)
            except (MissingExtraError, ConfigError) as err:
                result.status, result.note = "skipped", str(err)
                progress(f"{fmt}: skipped ({err})")
                continue
            except Exception as err:  # a runtime that fails on this model/machine: reported, the others go on
                result.status, result.note = "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                log.warning("%s failed", fmt, exc_info=True)
                continue
            result.peak_memory_mb = memory["mb"]
            runners[fmt] = runner
        # interleaved (faithful, pytorch, …, faithful, …): a change of machine load hits every format alike
        progress(f"timing {len(runners)} format(s), {runs} interleaved runs each …")
        times: dict[str, list[float]] = {fmt: [] for fmt in runners}
        for _ in range(runs):
            for fmt, runner in runners.items():
                times[fmt] += time_runner(runner, samples, 0, 1, device)
        baseline_p50 = float(np.percentile(times[BASELINE], 50)) if BASELINE in times else None
        for result in report.results:
            if result.format not in runners:
                continue
            runner = runners[result.format]
            p50, p95 = (float(np.percentile(times[result.format], q)) for q in PERCENTILES)
            result.latency_ms_p50, result.latency_ms_p95 = p50 * 1e3, p95 * 1e3
            result.images_per_s = batch / p50
            result.speedup = baseline_p50 / p50 if baseline_p50 else None
            result.gflops_per_s = flops / p50 / 1e9
            result.peak_fraction = result.gflops_per_s / peaks[_compute_dtype(result.format)]
            with torch.inference_mode():
                result.max_logit_diff = float((runner(samples)["pred_logits"].float() - reference).abs().max())
            if dataset is not None:
                progress(f"{result.format}: AP on {len(dataset[1])} images …")
                result.ap, result.ap50 = coco_ap_of(runner, loaded, *dataset)
            progress(f"{result.format}: p50 {result.latency_ms_p50:.1f} ms"
                     + (f", {result.speedup:.2f}× faithful" if result.speedup else ""))
    return report
