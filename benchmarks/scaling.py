"""Data-parallel scaling: training images/s for 1, 2, … processes at a fixed per-process batch.

    python benchmarks/scaling.py                         # 1 and 2 processes (CPU: gloo)
    python benchmarks/scaling.py --processes 1 2 4 8     # a GPU server: one process per GPU (nccl)
    python benchmarks/scaling.py -- --hidden_dim 256 --image_size 512    # other `detr train` flags

Each size is one ``torchrun --standalone --nproc_per_node N`` launch of this file (``--worker``), which
runs the engine's own ``train_one_epoch`` (DDP, the exact step of ``detr train``) on synthetic images:
one warm-up step, then ``--steps`` timed ones between two barriers. Throughput = N × batch × steps /
wall time; efficiency = throughput / (N × the 1-process throughput of the same run). On a CPU the
cores are shared: each process gets ``cores // N`` threads, so the ideal there is the 1-process
throughput (efficiency 1/N), and the table says so; the harness is the point, GPU numbers come from a
GPU machine. Results are appended to ``benchmarks/results/scaling.md`` with the machine described.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "benchmarks" / "results" / "scaling.md"
DEFAULT_FLAGS = ["--backbone", "resnet18", "--hidden_dim", "64", "--nheads", "4", "--enc_layers", "2", "--dec_layers",
                 "2", "--dim_feedforward", "256", "--num_queries", "20", "--image_size", "128", "--batch_size", "2",
                 "--dataset_file", "synthetic", "--num_workers", "0", "--backbone_weights", "none"]


def worker(out: Path, steps: int, flags: list[str]) -> None:
    """One process of a launch: time ``steps`` DDP training steps; rank 0 writes the result to ``out``."""
    import torch
    import torch.distributed as dist

    from torchdetr.cli.train import config_for_training
    from torchdetr.config import add_config_arguments
    from torchdetr.engine import distributed as du
    from torchdetr.engine.datasets import load_run_data, resolve_num_classes
    from torchdetr.engine.loaders import make_loaders
    from torchdetr.engine.loop import train_one_epoch
    from torchdetr.engine.optim import build_optimizer
    from torchdetr.engine.run_model import build_run_model
    from torchdetr.engine.runtime import start_process

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser)
    world = int(os.environ.get("WORLD_SIZE", 1))
    cfg = config_for_training(parser.parse_args(flags))
    device, _ = start_process(cfg.device, cfg.seed, cfg.dist_url)
    images = cfg.batch_size * world * (steps + 1)
    cfg = cfg.replace(num_train=images, num_val=1)
    data = load_run_data(cfg)
    cfg = resolve_num_classes(cfg, data.coco_gt)
    run = build_run_model(cfg, device, du.is_dist())
    loader, _ = make_loaders(data.train, data.val, cfg)
    optimizer, _, _ = build_optimizer(run.train_module, cfg, len(loader))
    times: list[float] = []

    def mark(step: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        if du.is_dist():
            dist.barrier()
        times.append(time.perf_counter())

    train_one_epoch(run.train_module, run.train_criterion, itertools.islice(loader, steps + 1), optimizer, device, 0, cfg,
                    on_step=mark)
    seconds = times[-1] - times[0]  # after the warm-up step
    if du.is_main_process():
        out.write_text(json.dumps({"processes": world, "images_per_second": world * cfg.batch_size * steps / seconds,
                                   "device": str(device), "threads": torch.get_num_threads(),
                                   "batch_size": cfg.batch_size}))
    du.cleanup()


def launch(processes: int, steps: int, flags: list[str], threads: int) -> dict:
    out = ROOT / "benchmarks" / "results" / f".scaling_{processes}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(Path(__file__).resolve()), "--worker", str(out), "--steps", str(steps), "--", *flags]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    result = json.loads(out.read_text())
    out.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per launch (after one warm-up)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then detr train flags (replacing the defaults)")
    args = parser.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    if args.worker is not None:
        worker(args.worker, args.steps, flags)
        return
    import torch
    from machine import machine_description

    flags = flags or DEFAULT_FLAGS
    gpus = torch.cuda.device_count()
    cores = len(os.sched_getaffinity(0))
    rows = []
    for n in args.processes:
        threads = 1 if gpus else max(1, cores // n)
        rows.append(launch(n, args.steps, flags, threads))
        print(rows[-1])
    single = next((r["images_per_second"] for r in rows if r["processes"] == 1), None)
    device = f"{gpus} × {torch.cuda.get_device_name(0)}" if gpus else "CPU"
    machine = f"{device}: {machine_description()}"
    lines = [f"\n### {time.strftime('%Y-%m-%d')}: {machine}\n",
             f"`detr train` flags: `{' '.join(flags)}`; {args.steps} timed steps after one warm-up; per-process batch "
             f"{rows[0]['batch_size']}" + ("" if gpus else f"; CPU: {cores} cores shared, cores // N threads per process "
                                          "(ideal throughput = the 1-process one, efficiency 1/N)") + "\n",
             "| processes | device | threads/process | images/s | efficiency = images/s ÷ (N × 1-process) |",
             "|---:|---|---:|---:|---:|"]
    for r in rows:
        efficiency = r["images_per_second"] / (r["processes"] * single) if single else float("nan")
        lines.append(f"| {r['processes']} | {r['device']} | {r['threads']} | {r['images_per_second']:.2f} | "
                     f"{efficiency:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not RESULTS.exists():
        RESULTS.write_text("# Data-parallel scaling (`benchmarks/scaling.py`)\n\nImages/s of training at a fixed "
                           "per-process batch for N processes (DDP), and efficiency against N × one process.\n")
    with RESULTS.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
