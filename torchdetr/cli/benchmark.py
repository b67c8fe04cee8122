"""``detr benchmark``: latency, throughput, memory, FLOP rate and AP of a model in every runtime, on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, OutputError

DEFAULT_SIZE = "800x1066"


def add_parser(subparsers) -> None:
    from ..inference.benchmark import DEFAULT_FORMATS, FORMAT_HELP, FORMATS

    p = subparsers.add_parser(
        "benchmark", help="how fast a model runs here: PyTorch fast paths, ONNX, OpenVINO, INT8 vs the faithful path",
        description="Time the model in each format on a random batch (latency p50/p95, images/s, peak memory, "
                    "GFLOP/s and fraction of this machine's measured matmul peak), against the faithful path in the "
                    "same process; with --data also AP, AP50 and INT8 calibration. Formats whose package is missing are "
                    "skipped with a note. Formats: " + "; ".join(f"{k}: {v}" for k, v in FORMAT_HELP.items()),
    )
    p.add_argument("--model", required=True, help="official model name (detr_resnet50, …) or checkpoint file")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                   help=f"comma-separated, from {', '.join(FORMATS)} (default: {','.join(DEFAULT_FORMATS)}); "
                        "faithful is always run first as the baseline")
    p.add_argument("--size", default=DEFAULT_SIZE, help=f"input HxW in pixels (default {DEFAULT_SIZE})")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads for every runtime (default: torch's)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per format (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--data", metavar="DIR", help="dataset folder (COCO layout, val split): AP and AP50 per format and INT8 "
                   "calibration (int8 is skipped without it)")
    p.add_argument("--ap_images", type=int, default=50, help="images of --data for AP and AP50 (default 50; 0: none, --data only "
                        "calibrates int8)")
    p.add_argument("--calibration_images", type=int, default=32, help="images of --data calibrating int8 (default 32)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, auto; ONNX/OpenVINO/INT8 run on CPU")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the table with the machine described "
                   "(e.g. benchmarks/results/inference.md)")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json/--markdown files")
    p.set_defaults(func=run)


def _check_output(path: str | None, overwrite: bool, option: str) -> Path | None:
    if path is None:
        return None
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputError(f"{option} {target} exists (--overwrite replaces it)")
    return target


def run(args: argparse.Namespace) -> int:
    from ..atomic_write import replace_atomic
    from ..engine.runtime import resolve_device
    from ..inference.benchmark import parse_size, run_benchmark
    from ..inference.loading import load_model

    size = parse_size(args.size)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats:
        raise ConfigError("--formats: give at least one format")
    json_path = _check_output(args.json, args.overwrite, "--json")
    markdown_path = _check_output(args.markdown, args.overwrite, "--markdown")
    loaded = load_model(args.model, device=resolve_device(args.device))
    report = run_benchmark(loaded, str(args.model), formats, size=size, batch=args.batch, threads=args.threads,
                           runs=args.runs, warmup=args.warmup, data=args.data, ap_images=args.ap_images,
                           calibration_images=args.calibration_images)
    print()
    print(report.table())
    for path, text, what in ((json_path, report.to_json(), "JSON"), (markdown_path, report.markdown(), "Markdown")):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_atomic(path, lambda tmp, text=text: Path(tmp).write_text(text), what=f"benchmark {what}")
            print(f"wrote {path}")
    return 0
